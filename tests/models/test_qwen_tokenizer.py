"""Qwen tokenizer (tiktoken on the shipped vocabulary) vs transformers' conversion of the same file."""

from __future__ import annotations

import base64
import gzip
import json
import unicodedata
from importlib import resources
from pathlib import Path

import pytest

from comfy_notebook.models.qwen_tokenizer import PATTERN, SPECIAL_TOKENS, get_qwen_tokenizer

CORPUS = json.loads((Path(__file__).parent / "prompts_corpus.json").read_text(encoding="utf-8"))
CHINESE = [
    "一只猫坐在窗台上，阳光洒在它的毛上", "赛博朋克风格的城市夜景，霓虹灯，雨夜", "水墨画：远山、小舟、渔翁",
    "一位穿着汉服的女孩在樱花树下，电影感，8k", "“你好，世界！”他说。", "中文与English混合的prompt, 含数字123和符号@#",
    "古风建筑，飞檐斗拱，金色夕阳", "宇航员骑着马在月球上", "《千里江山图》风格的山水", "繁體中文：臺灣的夜市",
    "日本語のテキスト：富士山と桜", "한국어 텍스트: 서울의 밤", "emoji 🐱🚀✨ and 中文 混排", "全角数字１２３ and ＡＢＣ",
    "e\u0301 (decomposed) vs é", "Ａ\u0308 combining", "tabs\tand\nnewlines\r\n中文\n\n", "  leading and trailing  ",
    "<|im_start|>user\n画一只猫<|im_end|>\n<|im_start|>assistant\n", "<think>\n\n</think>\n\n回答",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    tokenizers = pytest.importorskip("tokenizers")
    raw = resources.files("comfy_notebook.models.data").joinpath("qwen.tiktoken.gz").read_bytes()
    path = tmp_path_factory.mktemp("qwen") / "qwen.tiktoken"
    path.write_bytes(gzip.decompress(raw))
    tok = convert.TikTokenConverter(vocab_file=str(path), pattern=PATTERN,
                                    extra_special_tokens=list(SPECIAL_TOKENS)).converted()
    tok.normalizer = tokenizers.normalizers.NFC()  # as Qwen2TokenizerFast's tokenizer.json
    return tok


def test_special_token_ids_follow_the_vocabulary(reference) -> None:
    for name, index in SPECIAL_TOKENS.items():
        assert reference.token_to_id(name) == index
    raw = resources.files("comfy_notebook.models.data").joinpath("qwen.tiktoken.gz").read_bytes()
    lines = gzip.decompress(raw).splitlines()
    assert len(lines) == 151643 and base64.b64decode(lines[-1].split()[0])


def test_known_ids() -> None:
    tok = get_qwen_tokenizer()
    assert tok.encode("Hello world") == [9707, 1879]
    assert tok.encode("<|im_start|>user\n") == [151644, 872, 198]
    assert tok.decode(tok.encode("一只猫 🐱")) == "一只猫 🐱"


def test_ids_equal_transformers_on_a_corpus_with_chinese(reference) -> None:
    prompts = list(CORPUS) + CHINESE + [p.upper() for p in CHINESE]
    assert len(prompts) >= 200 and sum(any("\u4e00" <= ch <= "\u9fff" for ch in p) for p in prompts) >= 20
    tok = get_qwen_tokenizer()
    mismatches = [p for p in prompts if tok.encode(p) != reference.encode(p, add_special_tokens=False).ids]
    assert not mismatches, mismatches[:3]


def test_nfc_normalisation() -> None:
    tok = get_qwen_tokenizer()
    assert tok.encode("e\u0301") == tok.encode(unicodedata.normalize("NFC", "e\u0301"))
