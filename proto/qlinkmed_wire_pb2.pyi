from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("version", "round", "detections", "sifting", "estimate", "parity_request", "parity_reply", "verify", "amplify", "auth_tag", "abort")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    SIFTING_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    PARITY_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PARITY_REPLY_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    AMPLIFY_FIELD_NUMBER: _ClassVar[int]
    AUTH_TAG_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    version: int
    round: int
    detections: Detections
    sifting: Sifting
    estimate: Estimate
    parity_request: ParityRequest
    parity_reply: ParityReply
    verify: Verify
    amplify: Amplify
    auth_tag: AuthTag
    abort: Abort
    def __init__(self, version: _Optional[int] = ..., round: _Optional[int] = ..., detections: _Optional[_Union[Detections, _Mapping]] = ..., sifting: _Optional[_Union[Sifting, _Mapping]] = ..., estimate: _Optional[_Union[Estimate, _Mapping]] = ..., parity_request: _Optional[_Union[ParityRequest, _Mapping]] = ..., parity_reply: _Optional[_Union[ParityReply, _Mapping]] = ..., verify: _Optional[_Union[Verify, _Mapping]] = ..., amplify: _Optional[_Union[Amplify, _Mapping]] = ..., auth_tag: _Optional[_Union[AuthTag, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ...) -> None: ...

class Bits(_message.Message):
    __slots__ = ("count", "data")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    count: int
    data: bytes
    def __init__(self, count: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Detections(_message.Message):
    __slots__ = ("round_id", "detected", "bases")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    DETECTED_FIELD_NUMBER: _ClassVar[int]
    BASES_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    detected: Bits
    bases: bytes
    def __init__(self, round_id: _Optional[int] = ..., detected: _Optional[_Union[Bits, _Mapping]] = ..., bases: _Optional[bytes] = ...) -> None: ...

class Sifting(_message.Message):
    __slots__ = ("coincident", "bases", "intensities", "sample", "test_bits", "cascade_seed")
    COINCIDENT_FIELD_NUMBER: _ClassVar[int]
    BASES_FIELD_NUMBER: _ClassVar[int]
    INTENSITIES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TEST_BITS_FIELD_NUMBER: _ClassVar[int]
    CASCADE_SEED_FIELD_NUMBER: _ClassVar[int]
    coincident: Bits
    bases: bytes
    intensities: bytes
    sample: Bits
    test_bits: Bits
    cascade_seed: int
    def __init__(self, coincident: _Optional[_Union[Bits, _Mapping]] = ..., bases: _Optional[bytes] = ..., intensities: _Optional[bytes] = ..., sample: _Optional[_Union[Bits, _Mapping]] = ..., test_bits: _Optional[_Union[Bits, _Mapping]] = ..., cascade_seed: _Optional[int] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("test_bits",)
    TEST_BITS_FIELD_NUMBER: _ClassVar[int]
    test_bits: Bits
    def __init__(self, test_bits: _Optional[_Union[Bits, _Mapping]] = ...) -> None: ...

class ParityRequest(_message.Message):
    __slots__ = ("passes", "starts", "ends")
    PASSES_FIELD_NUMBER: _ClassVar[int]
    STARTS_FIELD_NUMBER: _ClassVar[int]
    ENDS_FIELD_NUMBER: _ClassVar[int]
    passes: bytes
    starts: bytes
    ends: bytes
    def __init__(self, passes: _Optional[bytes] = ..., starts: _Optional[bytes] = ..., ends: _Optional[bytes] = ...) -> None: ...

class ParityReply(_message.Message):
    __slots__ = ("parities",)
    PARITIES_FIELD_NUMBER: _ClassVar[int]
    parities: Bits
    def __init__(self, parities: _Optional[_Union[Bits, _Mapping]] = ...) -> None: ...

class Verify(_message.Message):
    __slots__ = ("seed", "digest")
    SEED_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    seed: Bits
    digest: Bits
    def __init__(self, seed: _Optional[_Union[Bits, _Mapping]] = ..., digest: _Optional[_Union[Bits, _Mapping]] = ...) -> None: ...

class Amplify(_message.Message):
    __slots__ = ("seed", "length")
    SEED_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    seed: Bits
    length: int
    def __init__(self, seed: _Optional[_Union[Bits, _Mapping]] = ..., length: _Optional[int] = ...) -> None: ...

class AuthTag(_message.Message):
    __slots__ = ("key_offset", "tag")
    KEY_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    key_offset: int
    tag: bytes
    def __init__(self, key_offset: _Optional[int] = ..., tag: _Optional[bytes] = ...) -> None: ...

class Abort(_message.Message):
    __slots__ = ("reason", "detail")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    reason: int
    detail: bytes
    def __init__(self, reason: _Optional[int] = ..., detail: _Optional[bytes] = ...) -> None: ...
