"""Validation edge cases found by the property tests."""

from __future__ import annotations

import pytest

from comfy_notebook.errors import ValidationError


def test_an_undeclared_link_to_an_invalid_node_fails_validation(session):
    """Found by the mutation property test: a Sink given an extra (undeclared) link to a node that
    misses its required input used to validate and then fail at run time (the executor runs every
    linked source); now the prompt fails validation, naming the node that is wrong."""
    api = {"1": {"inputs": {"value": 2, "a": ["3", 0]}, "class_type": "Sink"},
           "2": {"inputs": {"a": ["1", 0], "b": 3}, "class_type": "Add"},
           "3": {"inputs": {}, "class_type": "Sink"}}
    with pytest.raises(ValidationError) as info:
        session.run_prompt(api)
    assert info.value.node_errors["3"]["errors"][0]["type"] == "required_input_missing"
    assert "1" in info.value.node_errors["3"]["dependent_outputs"]
