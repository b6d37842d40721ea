"""The wire schema (issue 3). Until then the canonical encoding of `qlinkmed.qcore.codec` is the only one."""
