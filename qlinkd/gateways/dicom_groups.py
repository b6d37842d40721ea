"""How the DICOM SCP groups the instances it acknowledged into study transfers: per association, per
StudyInstanceUID (instances without one form one group per association, sent as a transfer with no study
UID), each group sent when its association ends or, on an association that stays open, once no instance
of it arrived for `quiet_s`. Pure bookkeeping: time is passed in, nothing here touches a file.

An instance sent twice in one group (same SOP Instance UID, hence the same name) replaces the earlier one,
as a PACS would; the replaced file is handed back so the caller can delete it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class StagedInstance:
    """One instance acknowledged to the modality and durable in the staging folder."""

    path: Path
    name: str
    """Its file name in the transfer (its SOP Instance UID, ``.dcm``)."""
    size: int
    sha256: str
    study_uid: str | None


@dataclass(slots=True, kw_only=True)
class Group:
    association: str
    study_uid: str | None
    peer: str
    instances: dict[str, StagedInstance] = field(default_factory=dict)
    """By name, in arrival order (a replaced instance keeps its first place)."""
    last: float = 0.0
    """When its last instance arrived (the caller's clock)."""

    @property
    def size(self) -> int:
        return sum(i.size for i in self.instances.values())


class Grouping:
    def __init__(self) -> None:
        self._groups: dict[tuple[str, str | None], Group] = {}

    def add(self, association: str, peer: str, instance: StagedInstance, now: float) -> StagedInstance | None:
        """Put `instance` in its group; returns the instance it replaced, if any."""
        key = (association, instance.study_uid)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(
                association=association, study_uid=instance.study_uid, peer=peer
            )
        replaced = group.instances.get(instance.name)
        group.instances[instance.name] = instance
        group.last = now
        return replaced

    def end_association(self, association: str) -> list[Group]:
        """Every group of an association that ended (released, aborted or dropped), to be sent now."""
        return self._take([k for k in self._groups if k[0] == association])

    def quiet(self, now: float, quiet_s: float) -> list[Group]:
        """The groups no instance came to for `quiet_s`, to be sent now."""
        return self._take([k for k, g in self._groups.items() if now - g.last >= quiet_s])

    def next_due(self, quiet_s: float) -> float | None:
        """When the next group falls quiet (the caller's clock), None if there is none."""
        return min((g.last + quiet_s for g in self._groups.values()), default=None)

    def open_groups(self) -> int:
        return len(self._groups)

    def _take(self, keys: list[tuple[str, str | None]]) -> list[Group]:
        return [self._groups.pop(k) for k in keys]
