"""Instruction templates: filling, dropping absent fields, validation and the paper's presets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sk_instructor._instruction import (
    DEFAULT_TEMPLATE,
    InstructionPair,
    InstructionTemplate,
    format_instruction,
)


def test_default_template_is_the_papers_unified_template():
    assert DEFAULT_TEMPLATE == "Represent the {domain} {text_type} for {objective}: "


def test_absent_objective_drops_its_for():
    assert (
        format_instruction(domain="Science", text_type="title") == "Represent the Science title: "
    )


def test_absent_domain_keeps_the():
    assert (
        format_instruction(text_type="sentence", objective="classification")
        == "Represent the sentence for classification: "
    )


def test_all_fields_present_matches_model_card_clustering_string():
    assert (
        format_instruction(domain="Medicine", text_type="sentence", objective="clustering")
        == "Represent the Medicine sentence for clustering: "
    )


def test_only_text_type_keeps_trailing_colon_and_space():
    assert format_instruction() == "Represent the sentence: "


@pytest.mark.parametrize("absent", [None, "", "   "])
def test_empty_or_blank_fields_count_as_absent(absent):
    assert (
        format_instruction(domain=absent, text_type="title", objective=absent)
        == "Represent the title: "
    )


def test_field_values_are_stripped():
    assert (
        format_instruction(domain=" Science ", text_type="title") == "Represent the Science title: "
    )


@pytest.mark.parametrize("connector", ["for", "of", "in", "on", "about"])
def test_every_connector_is_dropped_with_its_absent_field(connector):
    template = f"Represent the {{text_type}} {connector} {{objective}}: "
    assert format_instruction(template, text_type="post") == "Represent the post: "


def test_user_template_with_connectors_before_several_fields():
    template = "Represent the {text_type} of {domain} about {objective}: "
    assert (
        format_instruction(template, text_type="post", objective="war")
        == "Represent the post about war: "
    )


def test_non_connector_words_are_kept():
    # Only the documented lower-case connectors go; "using", "For" and "before" stay.
    assert (
        format_instruction("Represent the {text_type} using {objective}: ")
        == "Represent the sentence using: "
    )
    assert format_instruction("{text_type} For {objective}: ") == "sentence For: "
    assert format_instruction("{text_type} before {objective}: ") == "sentence before: "


def test_absent_field_at_start_takes_the_following_space():
    assert format_instruction("{domain} {text_type}: ", text_type="title") == "title: "


def test_escaped_braces_stay_literal():
    assert format_instruction("{{x}} Represent the {text_type}: ") == "{x} Represent the sentence: "


def test_values_are_not_reinterpreted_as_placeholders():
    assert (
        format_instruction(domain="{objective}", objective="clustering")
        == "Represent the {objective} sentence for clustering: "
    )


def test_unknown_placeholders_are_named():
    with pytest.raises(ValueError, match=r"\{task\}.*\{lang\}"):
        format_instruction("Represent the {task} in {lang}: ")


@pytest.mark.parametrize("template", ["Represent {}: ", "Represent {0}: "])
def test_positional_placeholders_are_rejected(template):
    with pytest.raises(ValueError, match="unknown placeholder"):
        format_instruction(template)


def test_format_spec_on_a_known_field_is_rejected_and_shown():
    with pytest.raises(ValueError, match=r"\{domain:>9\}"):
        format_instruction("Represent the {domain:>9} {text_type}: ", domain="Science")


def test_unbalanced_brace_is_a_clear_error():
    with pytest.raises(ValueError, match="not a valid format string"):
        format_instruction("Represent the {domain: ")


@pytest.mark.parametrize("text_type", [None, ""])
def test_missing_text_type_is_an_error_when_template_needs_it(text_type):
    with pytest.raises(ValueError, match="text_type is required"):
        format_instruction(domain="Science", text_type=text_type)


def test_text_type_may_be_absent_when_template_does_not_use_it():
    assert format_instruction("Represent the {domain} text: ", text_type=None) == (
        "Represent the text: "
    )


def test_non_string_field_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="domain must be a str"):
        format_instruction(domain=3)


@settings(max_examples=60, deadline=None)
@given(
    domain=st.one_of(st.none(), st.sampled_from(["Science", "Financial", "Wikipedia"])),
    text_type=st.sampled_from(["sentence", "title", "document"]),
    objective=st.one_of(st.none(), st.sampled_from(["clustering", "retrieval"])),
)
def test_default_template_output_is_always_clean(domain, text_type, objective):
    instruction = format_instruction(domain=domain, text_type=text_type, objective=objective)
    expected_words = ["Represent", "the"]
    expected_words += [domain] if domain else []
    expected_words += [text_type]
    expected_words += ["for", objective] if objective else []
    # Built independently: the words in order, joined by single spaces, then the ": " suffix.
    assert instruction == " ".join(expected_words) + ": "


# ------------------------------------------------------------------------------------------
# Presets: strings as the hkunlp/instructor-large model card and the paper write them
# ------------------------------------------------------------------------------------------


def test_retrieval_preset_matches_model_card():
    pair = InstructionTemplate.retrieval(domain="Wikipedia")
    assert pair == InstructionPair(
        query="Represent the Wikipedia question for retrieving supporting documents: ",
        document="Represent the Wikipedia document for retrieval: ",
    )


def test_retrieval_preset_without_domain():
    pair = InstructionTemplate.retrieval()
    assert pair.query == "Represent the question for retrieving supporting documents: "
    assert pair.document == "Represent the document for retrieval: "


def test_reranking_preset_matches_paper_table():
    pair = InstructionTemplate.reranking(domain="News")
    assert pair.query == "Represent the News query for retrieving articles: "
    assert pair.document == "Represent the News article for retrieval: "


def test_clustering_preset_matches_model_card():
    assert (
        InstructionTemplate.clustering(domain="Medicine")
        == "Represent the Medicine sentence for clustering: "
    )


def test_sts_preset_matches_model_card_similarity_example():
    assert InstructionTemplate.sts(domain="Science") == "Represent the Science sentence: "
    assert (
        InstructionTemplate.sts(domain="Financial", text_type="statement")
        == "Represent the Financial statement: "
    )


def test_classification_preset():
    assert (
        InstructionTemplate.classification(domain="Financial", text_type="statement")
        == "Represent the Financial statement for classification: "
    )
    assert InstructionTemplate.classification() == "Represent the sentence for classification: "


def test_instruction_pair_is_frozen():
    pair = InstructionTemplate.retrieval()
    with pytest.raises(AttributeError):
        pair.query = "changed"


def test_instruction_pair_unpacks_into_query_and_document():
    query, document = InstructionTemplate.retrieval("Wikipedia")
    assert query == "Represent the Wikipedia question for retrieving supporting documents: "
    assert document == "Represent the Wikipedia document for retrieval: "


def test_instruction_template_is_not_instantiated():
    with pytest.raises(TypeError, match="class methods"):
        InstructionTemplate()
