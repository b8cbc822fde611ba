"""The pure parts of embeddings: packing a batch into passes, unit vectors, the request's `input`
shapes, and the catalog's `kind`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from inference_server.engines.llama_cpp_engine import passes
from inference_server.openai.protocol import EmbeddingRequest
from inference_server.vectors import shortened, unit
from tasks.core import catalog
from tasks.core.errors import ConfigError


def test_a_batch_that_fits_is_one_pass() -> None:
    assert passes([5, 7, 3], tokens=16, seqs=8) == [range(0, 3)]


def test_passes_close_at_the_token_and_sequence_bounds_and_keep_the_order() -> None:
    assert passes([6, 6, 6, 2], tokens=12, seqs=8) == [range(0, 2), range(2, 4)]
    assert passes([1] * 5, tokens=100, seqs=2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert passes([12, 12], tokens=12, seqs=8) == [range(0, 1), range(1, 2)]
    assert passes([], tokens=12, seqs=8) == []


def test_unit_vectors_have_length_one_and_zero_stays_zero() -> None:
    assert unit([3.0, 4.0]) == [0.6, 0.8]
    assert unit([0.0, 0.0]) == [0.0, 0.0]


def test_shortened_keeps_the_first_dimensions_at_unit_length() -> None:
    short = shortened([3.0, 4.0, 12.0], 2)
    assert short == pytest.approx([0.6, 0.8])
    assert math.isclose(math.fsum(x * x for x in short), 1.0)


@pytest.mark.parametrize(
    ("sent", "inputs"),
    [
        ("one", ["one"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        ([], []),
    ],
)
def test_every_input_shape_becomes_a_list_of_texts_or_of_token_arrays(sent: object, inputs: object) -> None:
    assert EmbeddingRequest.model_validate({"model": "m", "input": sent}).input == inputs


@pytest.mark.parametrize("sent", [5, None, [1, "a"], [[1], ["a"]], [True, False], {"text": "a"}, [1.5]])
def test_other_inputs_are_refused_with_the_shapes_that_work(sent: object) -> None:
    with pytest.raises(ValidationError, match="a list of token arrays"):
        EmbeddingRequest.model_validate({"model": "m", "input": sent})


ENTRY = """models:
  - name: tiny
    description: d
    kind: {kind}
    format: gguf
    repo: org/repo
    files: [a.gguf]
    size_bytes: 10
    license: mit
    context_length: 512
"""


def test_catalog_kind_defaults_to_chat_and_names_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(ENTRY.format(kind="embedding"))
    assert catalog.load_catalog(path)["tiny"].kind == "embedding"
    path.write_text(ENTRY.replace("    kind: {kind}\n", ""))
    assert catalog.load_catalog(path)["tiny"].kind == "chat"
    path.write_text(ENTRY.format(kind="reranker"))
    with pytest.raises(ConfigError, match=r"entry 'tiny': kind: Input should be 'chat' or 'embedding'"):
        catalog.load_catalog(path)


def test_the_project_catalog_has_an_embedding_model() -> None:
    from tasks.core import config

    entries = catalog.load_catalog(config.PROJECT_ROOT / "catalog.yaml")
    assert entries["nomic-embed-text"].kind == "embedding"
    assert entries["smollm2"].kind == "chat"
