"""The department of an arrival (`access.departments`): rules tried in order, the first whose every
condition holds naming it, else the default; peer-written names compared in any case, codes exactly."""

from __future__ import annotations

from qlinkmed.qlinkd.access.departments import Arrival, DepartmentRule, DepartmentRules

RULES = DepartmentRules(
    rules=(
        DepartmentRule(
            department="Paediatric cardiology", peers=("hospital-a",), dicom_departments=("Cardio",)
        ),
        DepartmentRule(department="Cardiology", dicom_departments=("CARDIOLOGY", "Cardio")),
        DepartmentRule(department="Cardiology", modalities=("US", "XA")),
        DepartmentRule(
            department="Laboratory", hl7_receiving_applications=("lis",), message_types=("ORU^R01",)
        ),
        DepartmentRule(department="Wards", hl7_services=("MED", "sur")),
    ),
    default="Radiology",
)


def test_the_first_rule_that_holds_wins_even_when_a_later_one_holds_too() -> None:
    # Both of the first two rules hold for hospital-a's CARDIO study: the first names it.
    assert RULES.department_of(Arrival(peer="hospital-a", dicom_departments=("CARDIO",))) == (
        "Paediatric cardiology"
    )
    # From another peer the first rule's peer condition fails: the second names it.
    assert RULES.department_of(Arrival(peer="hospital-c", dicom_departments=("CARDIO",))) == "Cardiology"


def test_peer_written_names_match_in_any_case_and_codes_exactly() -> None:
    assert RULES.department_of(Arrival(peer="p", dicom_departments=("cardiology ",))) == "Cardiology"
    assert RULES.department_of(Arrival(peer="p", receiving_application="LIS", message_type="ORU^R01")) == (
        "Laboratory"
    )
    assert RULES.department_of(Arrival(peer="p", hospital_service="Sur")) == "Wards"
    # Modality codes and message types are codes: "us" is no modality, "oru^r01" no type.
    assert RULES.department_of(Arrival(peer="p", modalities=("us",))) == "Radiology"
    assert RULES.department_of(Arrival(peer="p", receiving_application="LIS", message_type="oru^r01")) == (
        "Radiology"
    )


def test_every_condition_of_a_rule_must_hold() -> None:
    # The laboratory rule needs both MSH-5 and the type: either alone falls through to the default.
    assert RULES.department_of(Arrival(peer="p", receiving_application="LIS", message_type="ADT^A01")) == (
        "Radiology"
    )
    assert RULES.department_of(Arrival(peer="p", message_type="ORU^R01")) == "Radiology"


def test_a_study_matches_when_any_of_its_modalities_or_department_names_is_listed() -> None:
    assert RULES.department_of(Arrival(peer="p", modalities=("SR", "US"))) == "Cardiology"
    assert RULES.department_of(Arrival(peer="p", dicom_departments=("ICU", "CARDIOLOGY"))) == "Cardiology"


def test_without_a_default_an_arrival_no_rule_names_names_no_department() -> None:
    rules = DepartmentRules(rules=RULES.rules)
    assert rules.department_of(Arrival(peer="p", modalities=("CT",))) is None
    assert rules.department_of(Arrival(peer="p", modalities=("XA",))) == "Cardiology"
    assert DepartmentRules(default="ICU").department_of(Arrival(peer="p")) == "ICU"


def test_the_names_it_can_produce_are_each_listed_once_in_order() -> None:
    assert RULES.names() == ("Paediatric cardiology", "Cardiology", "Laboratory", "Wards", "Radiology")


def test_what_the_peer_wrote_stays_out_of_repr() -> None:
    arrival = Arrival(
        peer="hospital-a",
        dicom_departments=("CARDIO-X",),
        receiving_application="LIS-X",
        hospital_service="MED-X",
    )
    assert "hospital-a" in repr(arrival)
    assert not any(text in repr(arrival) for text in ("CARDIO-X", "LIS-X", "MED-X"))
