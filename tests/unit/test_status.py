"""The status table classifies every code, service by service, and never raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimsebus.schemas.status import FailureKind, Service, StatusCategory, describe_status

S, W, F, C, P = (
    StatusCategory.SUCCESS,
    StatusCategory.WARNING,
    StatusCategory.FAILURE,
    StatusCategory.CANCEL,
    StatusCategory.PENDING,
)
T, X = FailureKind.TRANSIENT, FailureKind.PERMANENT


@pytest.mark.parametrize(
    ("code", "service", "category", "kind", "words"),
    [
        (0x0000, Service.STORAGE, S, None, "Success"),
        (0x0001, Service.STORAGE, W, None, "optional Attributes"),
        (0x0107, Service.STORAGE, W, None, "Attribute list error"),
        (0x0116, Service.STORAGE, W, None, "Out of Range"),
        (0x0122, Service.STORAGE, F, X, "SOP Class not supported"),
        (0x0124, Service.STORAGE, F, X, "Not authorized"),
        (0x0210, Service.STORAGE, F, T, "Duplicate invocation"),
        (0x0211, Service.STORAGE, F, X, "Unrecognized operation"),
        (0x0212, Service.STORAGE, F, X, "Mistyped argument"),
        (0x0213, Service.STORAGE, F, T, "Resource limitation"),
        (0xA700, Service.STORAGE, F, T, "Out of Resources"),
        (0xA7FF, Service.STORAGE, F, T, "Out of Resources"),
        (0xA801, Service.QUERY_RETRIEVE, F, X, "Move Destination unknown"),
        (0xA900, Service.STORAGE, F, X, "Data Set does not match SOP Class"),
        (0xA9FF, Service.QUERY_RETRIEVE, F, X, "Identifier does not match"),
        (0xB000, Service.STORAGE, W, None, "Coercion of Data Elements"),
        (0xB000, Service.QUERY_RETRIEVE, W, None, "One or more Failures"),
        (0xB006, Service.STORAGE, W, None, "Elements Discarded"),
        (0xB007, Service.STORAGE, W, None, "Data Set does not match SOP Class"),
        (0xC000, Service.STORAGE, F, X, "Cannot understand"),
        (0xCFFF, Service.QUERY_RETRIEVE, F, X, "Unable to process"),
        (0xFE00, Service.QUERY_RETRIEVE, C, None, "Cancel"),
        (0xFF00, Service.QUERY_RETRIEVE, P, None, "Pending"),
        (0xFF01, Service.QUERY_RETRIEVE, P, None, "Optional Keys"),
        (0xFF00, Service.STORAGE, F, X, "not a valid C-STORE"),
        (0xA701, Service.QUERY_RETRIEVE, F, T, "number of matches"),
        (0xA702, Service.QUERY_RETRIEVE, F, T, "sub-operations"),
    ],
)
def test_known_codes(
    code: int, service: Service, category: StatusCategory, kind: FailureKind | None, words: str
) -> None:
    info = describe_status(code, service)
    assert (info.category, info.failure_kind) == (category, kind)
    assert words in info.description
    assert info.retryable is (kind is T)


@pytest.mark.parametrize(
    ("code", "category"),
    [(0x01FF, F), (0xA123, F), (0xB123, W), (0xD000, F), (0x0002, F), (0xFFFF, F)],
)
def test_unknown_codes_are_classified_by_range(code: int, category: StatusCategory) -> None:
    info = describe_status(code)
    assert info.category is category
    assert "unknown" in info.description


@given(code=st.integers(0, 0xFFFF), service=st.sampled_from(Service))
def test_every_code_has_a_meaning(code: int, service: Service) -> None:
    info = describe_status(code, service)
    assert info.description
    assert (info.failure_kind is not None) == (info.category is F)


def test_out_of_range_code_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="70000 is not a valid status"):
        describe_status(70000)


def test_label() -> None:
    assert describe_status(0xA700).label == "0xA700"
