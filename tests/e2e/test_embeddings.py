"""/v1/embeddings through the official OpenAI SDK, on the bundled SmolLM2 (a chat model, mean-pooled).

The session server embeds; a second server serves the same file as an embedding-kind model, which
embeds but refuses to generate.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fixtures.server import TIMEOUT, RunningServer, running_server, settings_for_test

MODEL = "smollm2"
SIZE = 576  # SmolLM2 135M's hidden size
TEXTS = ["The cat sat on the mat.", "Rain is expected tomorrow.", "Prime numbers have two divisors."]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def vectors(oai: openai.OpenAI, texts: list[str], **options: Any) -> list[list[float]]:
    reply = oai.embeddings.create(model=MODEL, input=texts, **options)
    assert [item.index for item in reply.data] == list(range(len(texts)))
    return [item.embedding for item in reply.data]


def test_one_input_gives_one_unit_vector_and_counts_its_tokens(oai: openai.OpenAI) -> None:
    reply = oai.embeddings.create(model=MODEL, input="Hello there", encoding_format="float")
    assert reply.object == "list" and reply.model == MODEL and len(reply.data) == 1
    vector = reply.data[0].embedding
    assert len(vector) == SIZE
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 0


def test_a_batch_equals_its_inputs_one_by_one_and_the_same_text_the_same_vector(oai: openai.OpenAI) -> None:
    batch = vectors(oai, [*TEXTS, TEXTS[0]], encoding_format="float")
    alone = [vectors(oai, [text], encoding_format="float")[0] for text in TEXTS]
    for together, single in zip(batch, alone, strict=False):
        assert max(abs(x - y) for x, y in zip(together, single, strict=True)) < 1e-3
    assert vectors(oai, TEXTS[:1], encoding_format="float")[0] == alone[0]  # the same text, the same vector
    assert batch[3] == pytest.approx(batch[0], abs=1e-5)  # also in another place of a batch
    assert cosine(batch[0], batch[1]) < 0.9999  # different texts, different vectors


def test_base64_decodes_to_the_float_vectors(oai: openai.OpenAI) -> None:
    floats = vectors(oai, TEXTS, encoding_format="float")
    raw = oai.embeddings.with_raw_response.create(model=MODEL, input=TEXTS, encoding_format="base64")
    encoded = [item["embedding"] for item in raw.http_response.json()["data"]]
    decoded = [list(struct.unpack(f"<{SIZE}f", base64.b64decode(text))) for text in encoded]
    for plain, packed in zip(floats, decoded, strict=True):
        assert packed == pytest.approx(plain, abs=1e-6)
    assert vectors(oai, TEXTS) == decoded  # the SDK's default: base64, decoded for the caller


def test_dimensions_truncate_and_renormalise(oai: openai.OpenAI) -> None:
    full = vectors(oai, TEXTS[:1], encoding_format="float")[0]
    [short] = vectors(oai, TEXTS[:1], encoding_format="float", dimensions=64)
    assert len(short) == 64
    assert math.isclose(math.fsum(x * x for x in short), 1.0, rel_tol=1e-5)
    scale = math.sqrt(math.fsum(x * x for x in full[:64]))
    assert short == pytest.approx([x / scale for x in full[:64]], abs=1e-6)
    with pytest.raises(openai.BadRequestError, match=f"have {SIZE}"):
        oai.embeddings.create(model=MODEL, input="too many", dimensions=SIZE + 1)


def test_paraphrases_are_closer_than_unrelated_sentences(oai: openai.OpenAI) -> None:
    cat, kitten, taxes = vectors(
        oai,
        [
            "The cat is sleeping on the sofa.",
            "A cat sleeps on the couch.",
            "Quarterly tax returns must be filed by the end of April.",
        ],
    )
    assert cosine(cat, kitten) > cosine(cat, taxes)


def test_token_arrays_embed_as_the_model_s_own_ids(oai: openai.OpenAI) -> None:
    one = oai.embeddings.create(model=MODEL, input=[1, 504, 2143, 314])
    many = oai.embeddings.create(model=MODEL, input=[[1, 504, 2143, 314], [1, 9]])
    assert len(one.data) == 1 and len(many.data) == 2
    assert one.usage.prompt_tokens == 4 and many.usage.prompt_tokens == 6
    assert one.data[0].embedding == pytest.approx(many.data[0].embedding, abs=1e-3)


def test_a_batch_bigger_than_one_pass_is_embedded_whole_and_in_order(oai: openai.OpenAI) -> None:
    many = [[1, 504 + i, 2143] for i in range(65)]  # a pass takes 64 sequences: two passes
    together = [item.embedding for item in oai.embeddings.create(model=MODEL, input=many).data]
    alone = [oai.embeddings.create(model=MODEL, input=many[i]).data[0].embedding for i in (0, 64)]
    assert len(together) == 65
    assert cosine(together[0], alone[0]) > 0.999 and cosine(together[64], alone[1]) > 0.999
    assert cosine(together[64], alone[1]) > cosine(together[63], alone[1])  # in order


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"input": ""}, "input[0] is empty"),
        ({"input": []}, "at least one"),
        ({"input": ["fine", ""]}, "input[1] is empty"),
        ({"input": [[]]}, "input[0] is empty"),
        ({"input": 5}, "must be a string, a list of strings"),
        ({"input": [1, "a"]}, "must be a string, a list of strings"),
        ({"input": [[10**9]]}, "not in the model's vocabulary"),
        ({"input": [[1] * 3000]}, "more than the 2048"),
        ({"input": [[1] * 2000] * 151}, "more than 300000"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_bad_input_is_a_400_in_openai_s_envelope(oai: openai.OpenAI, body: dict[str, Any], says: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model=MODEL, **body)
    error = caught.value.response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert says in error["message"]


def test_an_unknown_model_is_a_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="available: smollm2"):
        oai.embeddings.create(model="nope", input="x")


@pytest.fixture(scope="module")
def embedding_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The bundled file served as a `kind: embedding` model, as the catalog's nomic-embed-text is."""
    settings = settings_for_test(context_size=512, slots=1)
    spec = settings.default.model_copy(update={"kind": "embedding"})
    with running_server(
        Path(tmp_path_factory.mktemp("embedding-only")), settings.model_copy(update={"models": [spec]})
    ) as server:
        yield server


def test_an_embedding_model_embeds_but_refuses_to_generate(embedding_only: RunningServer) -> None:
    client = openai.OpenAI(
        base_url=f"{embedding_only.url}/v1", api_key=embedding_only.api_key, max_retries=0, timeout=TIMEOUT
    )
    assert len(client.embeddings.create(model=MODEL, input="still embeds").data[0].embedding) == SIZE
    with pytest.raises(openai.BadRequestError, match=f"'{MODEL}' is an embedding model"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="is an embedding model"):
        client.completions.create(model=MODEL, prompt="Once", max_tokens=2)
