"""WorkflowTemplate: Jinja2 rendering with strict undefined variables, filters, comments, the
reserved variables, comfy-executors' documented example, and errors that name line and variable."""

from __future__ import annotations

import json
import pathlib

import pytest

from comfy_notebook.backends import WorkflowTemplate, apply_overrides
from comfy_notebook.errors import TemplateError

# comfy-executors' README example (github.com/Infinishot/comfy-executors), verbatim in shape:
# a Jinja comment inside the object, a templated batch size and input folder, and a trailing
# comma after the last node.
COMFY_EXECUTORS_EXAMPLE = """{
    "1": {
        "inputs": {
            "directory": "{{ input_images_dir }}",
            "image_load_cap": 0,
            "start_index": 0,
            "load_always": false
    },
    "class_type": "LoadImagesFromDir",
        "_meta": {
            "title": "Load Reference Images"
        }
    },
    "2": {
        "inputs": {
            "width": 896,
            "height": 1152,
            {# Batch sizes need to be templated as it will be determined by comfy-executors #}
            "batch_size": {{ batch_size|int }}
        },
    "class_type": "EmptyLatentImage",
        "_meta": {
            "title": "Empty Latent Image"
        }
    },
}
"""


def test_comfy_executors_documented_example(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "workflow.json.jinja"
    path.write_text(COMFY_EXECUTORS_EXAMPLE)
    t = WorkflowTemplate.from_file(path)
    assert t.variables == {"input_images_dir", "batch_size"}
    api = t.render(batch_size="8", input_images_dir="/data/refs")
    assert api["2"]["inputs"]["batch_size"] == 8  # |int turned "8" into 8
    assert api["1"]["inputs"]["directory"] == "/data/refs"
    assert api["2"]["class_type"] == "EmptyLatentImage"
    assert set(api) == {"1", "2"}


def test_filters_and_tojson() -> None:
    t = WorkflowTemplate.from_string(
        '{"3": {"class_type": "KSampler", "inputs": {"cfg": {{ cfg|float }}, "seed": {{ seed }},'
        ' "text": {{ text|tojson }}, "tags": {{ tags|tojson }}}}}')
    api = t.render(cfg="7", seed=3, text='say "hi"\nnow', tags=["a", 1])
    inputs = api["3"]["inputs"]
    assert inputs == {"cfg": 7.0, "seed": 3, "text": 'say "hi"\nnow', "tags": ["a", 1]}
    assert isinstance(inputs["cfg"], float)


def test_undefined_variable_names_line_and_variable() -> None:
    source = '{\n  "3": {"class_type": "KSampler",\n        "inputs": {"cfg": {{ cfg }}}}\n}'
    t = WorkflowTemplate.from_string(source, name="mine.json.jinja")
    with pytest.raises(TemplateError) as info:
        t.render(seed=1)
    err = info.value
    assert err.variable == "cfg" and err.line == 3
    text = str(err)
    assert "mine.json.jinja, line 3" in text and "'cfg' is undefined" in text
    assert '"cfg": {{ cfg }}' in text and "Fix:" in text


def test_undefined_attribute_and_syntax_errors() -> None:
    t = WorkflowTemplate.from_string('{"1": {"class_type": "X", "inputs": {"a": {{ p.width }}}}}')
    with pytest.raises(TemplateError) as info:
        t.render(p={"height": 1})
    assert info.value.variable == "width" and info.value.line == 1
    with pytest.raises(TemplateError) as info:
        WorkflowTemplate.from_string('{\n"1": {{ oops }\n}')
    assert info.value.line == 2 and "syntax" in str(info.value)


def test_rendered_text_that_is_not_json_names_the_rendered_line() -> None:
    t = WorkflowTemplate.from_string('{\n "1": {"class_type": "X",\n  "inputs": {"t": {{ t }}}}\n}')
    with pytest.raises(TemplateError) as info:
        t.render(t="not quoted")
    assert info.value.line == 3 and "not JSON" in str(info.value) and "tojson" in str(info.value)


def test_from_workflow_templates_seed_and_batch_size() -> None:
    api = json.loads((pathlib.Path(__file__).resolve().parents[2] / "comfy_notebook" / "data"
                      / "default_txt2img_api.json").read_text())
    t = WorkflowTemplate.from_workflow(api)
    assert {"seed", "batch_size"} <= t.variables
    same = t.render()  # recorded values are the defaults
    assert same == api
    changed = t.render(seed=5, batch_size=3)
    assert changed["3"]["inputs"]["seed"] == 5 and changed["5"]["inputs"]["batch_size"] == 3
    assert api["3"]["inputs"]["seed"] != 5  # the source prompt is untouched


def test_apply_overrides_by_id_title_class_and_bare_input() -> None:
    api = {"3": {"class_type": "KSampler", "inputs": {"cfg": 8, "model": ["4", 0]}},
           "6": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive"}, "inputs": {"text": "a"}},
           "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "b"}}}
    apply_overrides(api, {"3.cfg": 5, "Positive.text": "x", "cfg": 6})
    assert api["3"]["inputs"]["cfg"] == 6 and api["6"]["inputs"]["text"] == "x"
    with pytest.raises(TemplateError, match="2 nodes"):
        apply_overrides(api, {"text": "both"})
    with pytest.raises(TemplateError, match="no node"):
        apply_overrides(api, {"model": ["9", 0]})  # a link is not a constant input
