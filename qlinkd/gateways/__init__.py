"""The hospital-facing gateways: DICOM (C-STORE in, C-STORE out to the PACS), HL7 v2 over MLLP and FHIR
REST. Each takes what a hospital system sends, makes it durable in the data plane's outbox before it
answers success, and, at the receiving facility, forwards what arrived to the configured destination
through the one forwarding ledger (forwards.py)."""
