from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransferState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_STATE_UNSPECIFIED: _ClassVar[TransferState]
    TRANSFER_STATE_NEW: _ClassVar[TransferState]
    TRANSFER_STATE_PARTIAL: _ClassVar[TransferState]
    TRANSFER_STATE_COMPLETE: _ClassVar[TransferState]
TRANSFER_STATE_UNSPECIFIED: TransferState
TRANSFER_STATE_NEW: TransferState
TRANSFER_STATE_PARTIAL: TransferState
TRANSFER_STATE_COMPLETE: TransferState

class Frame(_message.Message):
    __slots__ = ("version", "round", "detections", "sifting", "estimate", "parity_request", "parity_reply", "verify", "amplify", "auth_tag", "abort", "hello", "round_start", "key_stored", "key_notice", "notice_ack", "audit_anchor", "channel_hello", "pulse_train", "analyser_settings", "detection_record", "pulses_sent", "channel_error")
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
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ROUND_START_FIELD_NUMBER: _ClassVar[int]
    KEY_STORED_FIELD_NUMBER: _ClassVar[int]
    KEY_NOTICE_FIELD_NUMBER: _ClassVar[int]
    NOTICE_ACK_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ANCHOR_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_HELLO_FIELD_NUMBER: _ClassVar[int]
    PULSE_TRAIN_FIELD_NUMBER: _ClassVar[int]
    ANALYSER_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    DETECTION_RECORD_FIELD_NUMBER: _ClassVar[int]
    PULSES_SENT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ERROR_FIELD_NUMBER: _ClassVar[int]
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
    hello: Hello
    round_start: RoundStart
    key_stored: KeyStored
    key_notice: KeyNotice
    notice_ack: NoticeAck
    audit_anchor: AuditAnchor
    channel_hello: ChannelHello
    pulse_train: PulseTrain
    analyser_settings: AnalyserSettings
    detection_record: DetectionRecord
    pulses_sent: PulsesSent
    channel_error: ChannelError
    def __init__(self, version: _Optional[int] = ..., round: _Optional[int] = ..., detections: _Optional[_Union[Detections, _Mapping]] = ..., sifting: _Optional[_Union[Sifting, _Mapping]] = ..., estimate: _Optional[_Union[Estimate, _Mapping]] = ..., parity_request: _Optional[_Union[ParityRequest, _Mapping]] = ..., parity_reply: _Optional[_Union[ParityReply, _Mapping]] = ..., verify: _Optional[_Union[Verify, _Mapping]] = ..., amplify: _Optional[_Union[Amplify, _Mapping]] = ..., auth_tag: _Optional[_Union[AuthTag, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., round_start: _Optional[_Union[RoundStart, _Mapping]] = ..., key_stored: _Optional[_Union[KeyStored, _Mapping]] = ..., key_notice: _Optional[_Union[KeyNotice, _Mapping]] = ..., notice_ack: _Optional[_Union[NoticeAck, _Mapping]] = ..., audit_anchor: _Optional[_Union[AuditAnchor, _Mapping]] = ..., channel_hello: _Optional[_Union[ChannelHello, _Mapping]] = ..., pulse_train: _Optional[_Union[PulseTrain, _Mapping]] = ..., analyser_settings: _Optional[_Union[AnalyserSettings, _Mapping]] = ..., detection_record: _Optional[_Union[DetectionRecord, _Mapping]] = ..., pulses_sent: _Optional[_Union[PulsesSent, _Mapping]] = ..., channel_error: _Optional[_Union[ChannelError, _Mapping]] = ...) -> None: ...

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

class Hello(_message.Message):
    __slots__ = ("facility", "peer", "protocol", "source", "pulses_per_round", "next_round", "last_committed", "pending_round", "auth_position", "eps_sec", "eps_cor", "e91_security", "decoy_intensities", "decoy_probabilities", "decoy_p_x", "rounds_in_flight", "cascade")
    FACILITY_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PULSES_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROUND_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    PENDING_ROUND_FIELD_NUMBER: _ClassVar[int]
    AUTH_POSITION_FIELD_NUMBER: _ClassVar[int]
    EPS_SEC_FIELD_NUMBER: _ClassVar[int]
    EPS_COR_FIELD_NUMBER: _ClassVar[int]
    E91_SECURITY_FIELD_NUMBER: _ClassVar[int]
    DECOY_INTENSITIES_FIELD_NUMBER: _ClassVar[int]
    DECOY_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    DECOY_P_X_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CASCADE_FIELD_NUMBER: _ClassVar[int]
    facility: str
    peer: str
    protocol: str
    source: str
    pulses_per_round: int
    next_round: int
    last_committed: int
    pending_round: int
    auth_position: int
    eps_sec: float
    eps_cor: float
    e91_security: str
    decoy_intensities: _containers.RepeatedScalarFieldContainer[float]
    decoy_probabilities: _containers.RepeatedScalarFieldContainer[float]
    decoy_p_x: float
    rounds_in_flight: int
    cascade: str
    def __init__(self, facility: _Optional[str] = ..., peer: _Optional[str] = ..., protocol: _Optional[str] = ..., source: _Optional[str] = ..., pulses_per_round: _Optional[int] = ..., next_round: _Optional[int] = ..., last_committed: _Optional[int] = ..., pending_round: _Optional[int] = ..., auth_position: _Optional[int] = ..., eps_sec: _Optional[float] = ..., eps_cor: _Optional[float] = ..., e91_security: _Optional[str] = ..., decoy_intensities: _Optional[_Iterable[float]] = ..., decoy_probabilities: _Optional[_Iterable[float]] = ..., decoy_p_x: _Optional[float] = ..., rounds_in_flight: _Optional[int] = ..., cascade: _Optional[str] = ...) -> None: ...

class RoundStart(_message.Message):
    __slots__ = ("pulses",)
    PULSES_FIELD_NUMBER: _ClassVar[int]
    pulses: int
    def __init__(self, pulses: _Optional[int] = ...) -> None: ...

class KeyStored(_message.Message):
    __slots__ = ("confirmation",)
    CONFIRMATION_FIELD_NUMBER: _ClassVar[int]
    confirmation: bytes
    def __init__(self, confirmation: _Optional[bytes] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("round_id", "start", "length")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    start: int
    length: int
    def __init__(self, round_id: _Optional[int] = ..., start: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class KeyNotice(_message.Message):
    __slots__ = ("key_id", "master_sae", "slave_sae", "segments")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MASTER_SAE_FIELD_NUMBER: _ClassVar[int]
    SLAVE_SAE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    master_sae: str
    slave_sae: str
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    def __init__(self, key_id: _Optional[str] = ..., master_sae: _Optional[str] = ..., slave_sae: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ...) -> None: ...

class NoticeAck(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class AuditAnchor(_message.Message):
    __slots__ = ("seq", "digest", "held_seq", "held_digest", "reply")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    HELD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HELD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    seq: int
    digest: str
    held_seq: int
    held_digest: str
    reply: bool
    def __init__(self, seq: _Optional[int] = ..., digest: _Optional[str] = ..., held_seq: _Optional[int] = ..., held_digest: _Optional[str] = ..., reply: _Optional[bool] = ...) -> None: ...

class ChannelHello(_message.Message):
    __slots__ = ("facility", "peer", "role", "protocol")
    FACILITY_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    facility: str
    peer: str
    role: str
    protocol: str
    def __init__(self, facility: _Optional[str] = ..., peer: _Optional[str] = ..., role: _Optional[str] = ..., protocol: _Optional[str] = ...) -> None: ...

class PulseTrain(_message.Message):
    __slots__ = ("bits", "bases", "intensities", "mu")
    BITS_FIELD_NUMBER: _ClassVar[int]
    BASES_FIELD_NUMBER: _ClassVar[int]
    INTENSITIES_FIELD_NUMBER: _ClassVar[int]
    MU_FIELD_NUMBER: _ClassVar[int]
    bits: Bits
    bases: Bits
    intensities: bytes
    mu: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, bits: _Optional[_Union[Bits, _Mapping]] = ..., bases: _Optional[_Union[Bits, _Mapping]] = ..., intensities: _Optional[bytes] = ..., mu: _Optional[_Iterable[float]] = ...) -> None: ...

class AnalyserSettings(_message.Message):
    __slots__ = ("settings", "count")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    settings: bytes
    count: int
    def __init__(self, settings: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class DetectionRecord(_message.Message):
    __slots__ = ("detected", "bits")
    DETECTED_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    detected: Bits
    bits: Bits
    def __init__(self, detected: _Optional[_Union[Bits, _Mapping]] = ..., bits: _Optional[_Union[Bits, _Mapping]] = ...) -> None: ...

class PulsesSent(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ChannelError(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class DataOpen(_message.Message):
    __slots__ = ("version", "facility", "key_ids", "mlkem_encapsulation_key")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FACILITY_FIELD_NUMBER: _ClassVar[int]
    KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    MLKEM_ENCAPSULATION_KEY_FIELD_NUMBER: _ClassVar[int]
    version: int
    facility: str
    key_ids: _containers.RepeatedScalarFieldContainer[str]
    mlkem_encapsulation_key: bytes
    def __init__(self, version: _Optional[int] = ..., facility: _Optional[str] = ..., key_ids: _Optional[_Iterable[str]] = ..., mlkem_encapsulation_key: _Optional[bytes] = ...) -> None: ...

class DataAccept(_message.Message):
    __slots__ = ("mlkem_ciphertext", "refused")
    MLKEM_CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    mlkem_ciphertext: bytes
    refused: str
    def __init__(self, mlkem_ciphertext: _Optional[bytes] = ..., refused: _Optional[str] = ...) -> None: ...

class DataMessage(_message.Message):
    __slots__ = ("ready", "offer", "position", "chunk", "ack", "delivered", "refused", "ehr", "pad")
    READY_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    EHR_FIELD_NUMBER: _ClassVar[int]
    PAD_FIELD_NUMBER: _ClassVar[int]
    ready: Ready
    offer: Offer
    position: Position
    chunk: Chunk
    ack: Ack
    delivered: Delivered
    refused: Refused
    ehr: EhrMessage
    pad: PadKey
    def __init__(self, ready: _Optional[_Union[Ready, _Mapping]] = ..., offer: _Optional[_Union[Offer, _Mapping]] = ..., position: _Optional[_Union[Position, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., delivered: _Optional[_Union[Delivered, _Mapping]] = ..., refused: _Optional[_Union[Refused, _Mapping]] = ..., ehr: _Optional[_Union[EhrMessage, _Mapping]] = ..., pad: _Optional[_Union[PadKey, _Mapping]] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Offer(_message.Message):
    __slots__ = ("transfer_id", "manifest")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    manifest: bytes
    def __init__(self, transfer_id: _Optional[str] = ..., manifest: _Optional[bytes] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("transfer_id", "state", "file_index", "offset")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FILE_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    state: TransferState
    file_index: int
    offset: int
    def __init__(self, transfer_id: _Optional[str] = ..., state: _Optional[_Union[TransferState, str]] = ..., file_index: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("transfer_id", "file_index", "offset", "data")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    file_index: int
    offset: int
    data: bytes
    def __init__(self, transfer_id: _Optional[str] = ..., file_index: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("transfer_id", "file_index", "offset")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    file_index: int
    offset: int
    def __init__(self, transfer_id: _Optional[str] = ..., file_index: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class Delivered(_message.Message):
    __slots__ = ("transfer_id", "manifest_sha256")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    manifest_sha256: str
    def __init__(self, transfer_id: _Optional[str] = ..., manifest_sha256: _Optional[str] = ...) -> None: ...

class Refused(_message.Message):
    __slots__ = ("transfer_id", "reason")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    reason: str
    def __init__(self, transfer_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PadKey(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class EhrMessage(_message.Message):
    __slots__ = ("transfer_id", "manifest", "body")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    manifest: bytes
    body: bytes
    def __init__(self, transfer_id: _Optional[str] = ..., manifest: _Optional[bytes] = ..., body: _Optional[bytes] = ...) -> None: ...
