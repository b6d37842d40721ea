"""The QKD link between two facilities: the sans-IO link machine, its messages and wire codec, the durable
half, and the thin asyncio shell that drives it."""
