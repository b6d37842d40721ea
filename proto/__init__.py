"""The wire schema: `qlinkmed_wire.proto` and its generated module `qlinkmed_wire_pb2`."""
