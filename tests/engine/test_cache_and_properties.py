"""Cache policies, sizes, signature properties, and fuzzed API prompts (hypothesis)."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfy_notebook.engine import LRU, ByteBudget, Cache, KeepAll, node_signature, sizeof
from comfy_notebook.engine.cache import canonical
from comfy_notebook.errors import ValidationError


class Arr:
    def __init__(self, n):
        self.nbytes = n


class Tensorish:
    def element_size(self):
        return 2

    def numel(self):
        return 10


def test_sizeof_duck_typing():
    assert sizeof(([Arr(100)], {"a": Tensorish(), "b": (Arr(4), "x")})) == 124
    shared = Arr(8)
    assert sizeof([shared, shared]) == 8


def test_policies_and_stats():
    c = Cache(LRU(2))
    for k in "abc":
        c.put(k, ([Arr(10)],), None)
    assert c.keys() == ["b", "c"] and c.stats().evictions == 1
    assert c.get("b") is not None and c.get("a") is None
    c.put("d", ([Arr(1)],), None)
    assert c.keys() == ["b", "d"]
    s = c.stats()
    assert (s.hits, s.misses, s.entries, s.bytes) == (1, 1, 2, 11)
    b = Cache(ByteBudget(25))
    for k in "abc":
        b.put(k, ([Arr(10)],), None)
    assert b.keys() == ["b", "c"] and b.stats().bytes == 20
    k = Cache(KeepAll())
    for key in "abc":
        k.put(key, ([Arr(1)],), {"ui": [1]})
        k.tag(key, "cell:1" if key != "c" else "cell:2")
    assert k.release_tag("cell:1", keep={"b"}) == 1 and k.keys() == ["b", "c"]
    assert "b" in k and k.release("b") and not k.release("b") and len(k) == 1
    k.put("~unique", ([1],), None)
    assert "~unique" not in k
    k.clear()
    assert len(k) == 0 and k.stats().bytes == 0


def test_signature_properties():
    base = node_signature("A", None, None, {"x": 1, "y": "s"}, {"z": ("k", 0)})
    assert base == node_signature("A", None, None, {"y": "s", "x": 1}, {"z": ("k", 0)})
    assert base != node_signature("A", None, None, {"x": 1.0, "y": "s"}, {"z": ("k", 0)})
    assert base != node_signature("A", None, None, {"x": True, "y": "s"}, {"z": ("k", 0)})
    assert base != node_signature("A", None, None, {"x": 1, "y": "s"}, {"z": ("k", 1)})
    assert base != node_signature("A", 1, None, {"x": 1, "y": "s"}, {"z": ("k", 0)})
    assert base != node_signature("A", None, "7", {"x": 1, "y": "s"}, {"z": ("k", 0)})
    assert node_signature("A", float("nan"), None, {}, {}).startswith("~")
    assert node_signature("A", None, None, {"x": object()}, {}).startswith("~")
    assert node_signature("A", None, None, {}, {"z": ("~up", 0)}).startswith("~")
    deep: list = []
    for _ in range(40):
        deep = [deep]
    assert canonical(deep) is None and canonical(list(range(20_000))) is None
    assert canonical({"b": 1, "a": [1, (2,)]}) == canonical({"a": [1, (2,)], "b": 1})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
ids = st.sampled_from(["1", "2", "3", "4", "x"])
link = st.tuples(ids, st.integers(-1, 2)).map(list)
classes = st.sampled_from(["Const", "Add", "Sink", "Show", "Combo", "Random", "Steps", "Nope"])
names = st.sampled_from(["value", "a", "b", "choice", "flag", "ratio", "text", "steps", "other"])
node = st.fixed_dictionaries(
    {"class_type": classes, "inputs": st.dictionaries(names, json_values | link, max_size=4)},
    optional={"_meta": st.fixed_dictionaries({"title": st.text(max_size=4)})},
)
prompts = st.dictionaries(ids, node | json_values, max_size=5)

BASE = {"1": {"inputs": {"value": 2}, "class_type": "Const"},
        "2": {"inputs": {"a": ["1", 0], "b": 3}, "class_type": "Add"},
        "3": {"inputs": {"value": ["2", 0]}, "class_type": "Sink"}}


def _outcome(session, api):
    """The pack's nodes accept anything that validates, so only these two outcomes exist."""
    try:
        return session.run_prompt(api)
    except ValidationError as exc:
        json.dumps(exc.node_errors, default=repr)
        return exc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(api=prompts)
def test_random_prompts_give_result_or_validation_error(session, api):
    _outcome(session, api)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_prompts_give_result_or_validation_error(session, data):
    api = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        nid = data.draw(st.sampled_from(sorted(api)))
        what = data.draw(st.sampled_from(["drop_input", "set_input", "class", "delete", "link"]))
        inputs = api[nid]["inputs"]
        if what == "drop_input" and inputs:
            inputs.pop(data.draw(st.sampled_from(sorted(inputs))))
        elif what == "set_input":
            inputs[data.draw(names)] = data.draw(json_values)
        elif what == "class":
            api[nid]["class_type"] = data.draw(classes)
        elif what == "delete" and len(api) > 1:
            del api[nid]
        elif what == "link":
            inputs[data.draw(names)] = data.draw(link)
    _outcome(session, api)
