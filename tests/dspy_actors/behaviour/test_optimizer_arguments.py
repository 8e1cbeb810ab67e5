"""DSPy's optimizer arguments: compile(teacher=...), max_errors=, eval_kwargs=, sample=,
KNNFewShot(vectorizer=Embedder(...)), and dsa.Embedder against a real HTTP endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors._embedder import EmbeddingError
from dspy_actors.optimizers import COPRO, BootstrapFewShot, KNNFewShot, LabeledFewShot
from dspy_actors.optimizers._bootstrap import BootstrapError
from tests.dspy_actors.optimizers.task import WORDS, dataset, metric, task_lm

TRAIN = dataset(0, 6)


def test_compile_takes_the_teacher_as_dspy_does() -> None:
    with task_lm() as (sim, lm):
        student = dsa.Predict("question -> answer")
        student.lm = lm
        teacher = LabeledFewShot(k=2).compile(student, trainset=TRAIN)  # answers right
        blind = BootstrapFewShot(metric, max_labeled_demos=0).compile(student, trainset=TRAIN)
        assert blind.predictors()[0].demos == []  # no teacher: nothing to bootstrap
        taught = BootstrapFewShot(metric, max_labeled_demos=0).compile(
            student, teacher=teacher, trainset=TRAIN
        )
        assert len(taught.predictors()[0].demos) == 4
        with pytest.raises(TypeError, match="COPRO does not use"):
            COPRO(metric, prompt_model=lm).compile(student, trainset=TRAIN, teacher=teacher)
        assert sim.request_count > 0


def test_bootstrap_max_errors_stops_an_outage() -> None:
    with task_lm() as (_sim, lm):
        student = dsa.Predict("question -> answer")
        student.lm = lm

        def failing(example: Any, prediction: Any, trace: Any = None) -> bool:
            raise RuntimeError("metric down")

        assert BootstrapFewShot(failing).max_errors == 10  # DSPy's default bound
        with pytest.raises(BootstrapError, match=r"max_errors=2"):
            BootstrapFewShot(failing, max_errors=2).compile(student, trainset=TRAIN)


def test_labeled_few_shot_compile_sample_false_takes_the_first_k() -> None:
    student = dsa.Predict("question -> answer")
    compiled = LabeledFewShot(k=3).compile(student, trainset=TRAIN, sample=False)
    assert [d["question"] for d in compiled.predictors()[0].demos] == [
        e.question for e in TRAIN[:3]
    ]
    sampled = LabeledFewShot(k=3).compile(student, trainset=TRAIN, seed=4)
    assert len(sampled.predictors()[0].demos) == 3


def test_copro_compile_takes_eval_kwargs() -> None:
    with task_lm() as (_sim, lm):
        student = dsa.Predict("question -> answer")
        student.lm = lm
        optimizer = COPRO(metric, prompt_model=lm, breadth=2, depth=1)
        compiled = optimizer.compile(
            student,
            trainset=TRAIN[:3],
            eval_kwargs={"num_threads": 2, "display_progress": True, "display_table": 0},
        )
        assert compiled.predictors()[0].signature.instructions
        assert optimizer.num_threads == 8  # the override was for that run only
        with pytest.raises(TypeError, match=r"got \['colour'\]"):
            optimizer.compile(student, trainset=TRAIN, eval_kwargs={"colour": 1})


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body["auth"] = self.headers.get("Authorization")
        type(self).seen.append(body)
        if body["input"] == ["fail"]:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"upstream broke")
            return
        letters = "abcdefghijklmnopqrstuvwxyz"
        data = [
            {"index": i, "embedding": [float(t.lower().count(c)) for c in letters]}
            for i, t in enumerate(body["input"])
        ]
        payload = json.dumps({"data": list(reversed(data))}).encode()  # any order: by index
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def embeddings_server() -> Iterator[str]:
    """A real OpenAI-compatible /embeddings endpoint on loopback (bag of letters)."""
    _EmbeddingsHandler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsHandler)
    thread = threading.Thread(target=server.serve_forever, name="embeddings-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_embedder_batches_caches_and_keeps_the_key_out_of_sight(embeddings_server: str) -> None:
    with dsa.Embedder(
        "openai/text-embedding-3-small", batch_size=2, api_base=embeddings_server,
        api_key="sk-secret", dimensions=26,
    ) as embedder:  # fmt: skip
        vectors = embedder(["abc", "bb", "c"])
        assert vectors[1][1] == 2.0
        assert len(vectors) == 3
        assert [len(s["input"]) for s in _EmbeddingsHandler.seen] == [2, 1]
        assert _EmbeddingsHandler.seen[0]["model"] == "text-embedding-3-small"
        assert _EmbeddingsHandler.seen[0]["dimensions"] == 26
        assert _EmbeddingsHandler.seen[0]["auth"] == "Bearer sk-secret"
        assert embedder("abc") == vectors[0]  # cached: no new request
        assert len(_EmbeddingsHandler.seen) == 2
        assert "sk-secret" not in repr(embedder)
        with pytest.raises(EmbeddingError, match="HTTP 500") as info:
            embedder(["fail"])
        assert "sk-secret" not in str(info.value)


def test_embedder_wraps_a_function() -> None:
    calls: list[list[str]] = []

    def fn(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [[float(len(t))] for t in texts]

    embedder = dsa.Embedder(fn, batch_size=2, caching=False)
    assert embedder(["a", "bb", "ccc"]) == [[1.0], [2.0], [3.0]]
    embedder(["a"])
    assert calls == [["a", "bb"], ["ccc"], ["a"]]
    with pytest.raises(TypeError, match="embeds strings"):
        embedder([1])  # type: ignore[list-item]


def test_knn_few_shot_with_a_vectorizer_embedder(embeddings_server: str) -> None:
    with (
        task_lm() as (_sim, lm),
        dsa.Embedder("openai/emb", api_base=embeddings_server, api_key="k") as embedder,
    ):
        student = dsa.Predict("question -> answer")
        student.lm = lm
        knn = KNNFewShot(3, TRAIN, vectorizer=embedder, metric=metric, max_bootstrapped_demos=1)
        assert knn.vectorizer is embedder
        compiled = knn.compile(student)
        near = compiled.neighbors(question=f"Reverse the word: {WORDS[3]}")  # type: ignore[attr-defined]
        assert near[0] == TRAIN[3]
        assert compiled(question=f"Reverse the word: {WORDS[2]}").answer == WORDS[2][::-1]
    with pytest.raises(TypeError, match="needs one vectorizer"):
        KNNFewShot(3, TRAIN)
