"""The CERT r4.2 tables' columns, qlink's request log, the departments and web-site categories: the names
the generator writes and the features read (one place, so they cannot drift apart)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_S = 86_400
HOUR_S = 3_600

LOGON_COLUMNS = ("id", "date", "user", "pc", "activity")
DEVICE_COLUMNS = ("id", "date", "user", "pc", "activity")
FILE_COLUMNS = ("id", "date", "user", "pc", "filename", "content")
EMAIL_COLUMNS = ("id", "date", "user", "pc", "to", "cc", "bcc", "from", "size", "attachments", "content")
HTTP_COLUMNS = ("id", "date", "user", "pc", "url", "content")
LDAP_COLUMNS = (
    "employee_name",
    "user_id",
    "email",
    "role",
    "business_unit",
    "functional_unit",
    "department",
    "team",
    "supervisor",
)
REQUEST_COLUMNS = ("id", "date", "user", "action", "department", "modality", "message_type", "volume")
SCHEMA: dict[str, tuple[str, ...]] = {
    "logon": LOGON_COLUMNS,
    "device": DEVICE_COLUMNS,
    "file": FILE_COLUMNS,
    "email": EMAIL_COLUMNS,
    "http": HTTP_COLUMNS,
    "requests": REQUEST_COLUMNS,
}

DEPARTMENTS = (
    "Radiology",
    "Cardiology",
    "Oncology",
    "Emergency",
    "Neurology",
    "Pediatrics",
    "Administration",
    "IT",
)
CLINICAL = DEPARTMENTS[:6]
MODALITIES = {
    "Radiology": ("CT", "MR", "CR"),
    "Cardiology": ("US", "XA"),
    "Oncology": ("CT", "PT"),
    "Emergency": ("CR", "CT"),
    "Neurology": ("MR", "CT"),
    "Pediatrics": ("CR", "US"),
    "Administration": ("none",),
    "IT": ("none",),
}
MESSAGE_TYPES = ("dicom", "ORU^R01", "ADT^A01", "fhir")
COMPANY_DOMAIN = "dtaa-health.org"

# Web sites by category; the features read the category from the host name.
NORMAL_SITES = ("pubmed.gov", "uptodate.com", "news.example.com", "weather.example.com", "intranet.local")
JOB_SITES = ("monster.com", "careerbuilder.com", "indeed.com", "jobhuntersbible.com")
LEAK_SITES = ("wikileaks.org", "pastebin-drop.net")
HACK_SITES = ("keylogger-tools.net", "exploit-db.com")
COMPETITORS = ("mercy-imaging.com", "northstar-health.com")


@dataclass(frozen=True, slots=True)
class Directory:
    """Who the users are: LDAP columns, their own PC, employment days and authorised departments."""

    ldap: dict[str, np.ndarray]
    own_pc: np.ndarray
    hired_day: np.ndarray
    left_day: np.ndarray
    """First day no longer employed (`days` for those who stay)."""
    authorised: np.ndarray
    """(users, len(DEPARTMENTS)) bool: whose data each user may request."""

    @property
    def user_ids(self) -> np.ndarray:
        return self.ldap["user_id"]
