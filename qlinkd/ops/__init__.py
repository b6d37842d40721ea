"""Operations, the layer everything else stands on: configuration, PKI, the audit log, metrics, logging,
systemd notification and the process helper both entry points share."""
