"""The key pool: the durable key store, the key manager that hands each key out once, and the ETSI GS QKD
014 API."""
