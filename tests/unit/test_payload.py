"""Which files go into a C-STORE-RQ as their own bytes, which decoded and encoded (``payload``)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimsebus.services.node.payload import (
    StoredFile,
    accepted_syntaxes,
    readable_as_stored,
    sends_own_bytes,
    syntax_encoding,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
INSTANCE = "1.2.826.0.1.3680043.8.498.1"

CT_EXPLICIT = StoredFile(CT, INSTANCE, EXPLICIT, CT, INSTANCE, (False, True))


def test_given_its_own_syntax_accepted_when_deciding_then_the_file_goes_as_its_bytes() -> None:
    accepted = accepted_syntaxes([(CT, EXPLICIT, True)])
    assert sends_own_bytes(CT_EXPLICIT, accepted)


def test_given_another_syntax_accepted_when_deciding_then_the_file_is_decoded() -> None:
    accepted = accepted_syntaxes([(CT, IMPLICIT, True)])
    assert not sends_own_bytes(CT_EXPLICIT, accepted)


def test_given_its_syntax_accepted_for_another_sop_class_only_then_the_file_is_decoded() -> None:
    accepted = accepted_syntaxes([(MR, EXPLICIT, True), (CT, IMPLICIT, True)])
    assert not sends_own_bytes(CT_EXPLICIT, accepted)


def test_given_a_context_accepted_without_the_scu_role_then_it_is_not_used() -> None:
    assert accepted_syntaxes([(CT, EXPLICIT, False)]) == frozenset()
    assert not sends_own_bytes(CT_EXPLICIT, accepted_syntaxes([(CT, EXPLICIT, False)]))


@pytest.mark.parametrize(
    ("syntax", "encoding"),
    [
        (IMPLICIT, (True, True)),
        (EXPLICIT, (False, True)),
        (BIG, (False, False)),
        (DEFLATED, (False, True)),
        (JPEG_LOSSLESS, (False, True)),
    ],
)
def test_given_a_compressed_or_other_syntax_of_the_file_accepted_then_it_goes_as_its_bytes(
    syntax: str, encoding: tuple[bool, bool]
) -> None:
    file = dataclasses.replace(CT_EXPLICIT, transfer_syntax=syntax, encoding=encoding)
    assert syntax_encoding(syntax) == encoding
    assert sends_own_bytes(file, accepted_syntaxes([(CT, syntax, True)]))


@pytest.mark.parametrize(
    "change",
    [
        {"meta_sop_instance": "1.2.826.0.1.3680043.8.498.2"},  # the meta names another instance
        {"meta_sop_instance": None},  # no Media Storage SOP Instance UID
        {"meta_sop_class": MR},
        {"meta_sop_class": None},
        {"encoding": (True, True)},  # labelled explicit, encoded implicit
        {"encoding": (False, False)},
    ],
)
def test_given_a_file_whose_meta_is_not_its_data_sets_then_it_is_decoded(
    change: dict[str, object],
) -> None:
    # pynetdicom would take the request's UIDs from the meta, or send mislabelled bytes
    file = dataclasses.replace(CT_EXPLICIT, **change)  # type: ignore[arg-type]
    assert not readable_as_stored(file)
    assert not sends_own_bytes(file, accepted_syntaxes([(CT, EXPLICIT, True)]))


def test_given_an_encoding_pydicom_could_not_tell_then_the_syntax_is_trusted() -> None:
    assert readable_as_stored(dataclasses.replace(CT_EXPLICIT, encoding=(None, None)))


SYNTAXES = st.sampled_from([EXPLICIT, IMPLICIT, BIG, DEFLATED, JPEG_LOSSLESS])
CLASSES = st.sampled_from([CT, MR])


@given(
    sop_class=CLASSES,
    syntax=SYNTAXES,
    contexts=st.lists(st.tuples(CLASSES, SYNTAXES, st.booleans()), max_size=6),
)
def test_bytes_exactly_when_a_scu_context_of_its_class_has_its_syntax(
    sop_class: str, syntax: str, contexts: list[tuple[str, str, bool]]
) -> None:
    file = StoredFile(sop_class, INSTANCE, syntax, sop_class, INSTANCE, syntax_encoding(syntax))
    expected = (sop_class, syntax, True) in contexts
    assert sends_own_bytes(file, accepted_syntaxes(contexts)) is expected
