"""MTR-Suite retrieval pieces: the spec's clustering and metric values, invariants, the toy corpus
and bag-of-words baseline end to end, and the retrieval-metrics notebook."""

import itertools
import math
import pathlib

import numpy as np
import pytest

from jaxrl_llm.analysis import retrieval as rt
from notebook_run import assert_stored_without_outputs, execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "05_retrieval_metrics.ipynb"

SPEC_KNN = {0: [2, 1, 3], 1: [4, 0, 2], 2: [0, 1, 4], 3: [4, 1, 0], 4: [1, 3, 2]}


# ----------------------------------------------------------------------------- spec values


def test_clusters_spec_value():
    assert rt.greedy_traversal_clusters(SPEC_KNN, 3) == [[0, 2, 1], [3, 4]]
    # the same table as a sequence indexed by doc id
    assert rt.greedy_traversal_clusters([SPEC_KNN[i] for i in range(5)], 3) == [[0, 2, 1], [3, 4]]


def test_metrics_spec_values():
    ranked, gold = [[3, 1, 2], [5, 6, 7]], [1, 7]
    m = rt.retrieval_metrics(ranked, gold, ks=(1, 2, 3))
    assert m["recall@1"] == pytest.approx(0.0, abs=1e-6)
    assert m["recall@2"] == pytest.approx(0.5, abs=1e-6)
    assert m["recall@3"] == pytest.approx(1.0, abs=1e-6)
    assert m["mrr@3"] == pytest.approx(0.416667, abs=1e-6)
    assert m["ndcg@3"] == pytest.approx(0.565465, abs=1e-6)
    np.testing.assert_allclose(rt.gold_ranks(ranked, gold), [2, 3])
    per = rt.per_turn_metrics(ranked, gold, 3)
    np.testing.assert_allclose(per["mrr"], [1 / 2, 1 / 3], atol=1e-12)
    np.testing.assert_allclose(per["ndcg"], [1 / math.log2(3), 1 / math.log2(4)], atol=1e-12)


def test_missing_gold_scores_zero():
    ranked, gold = [[4, 5], [9]], [4, 1]
    assert rt.gold_ranks(ranked, gold).tolist() == [1, math.inf]
    per = rt.per_turn_metrics(ranked, gold, 20)
    for name in ("recall", "mrr", "ndcg"):
        np.testing.assert_allclose(per[name], [1.0, 0.0])


# ----------------------------------------------------------------------------- clustering


def test_cluster_closes_at_size_and_dead_end():
    # chain 0 -> 1 -> 2 -> 3: size 2 cuts it; size 10 only ends at the dead end
    chain = {0: [1], 1: [2], 2: [3], 3: []}
    assert rt.greedy_traversal_clusters(chain, 2) == [[0, 1], [2, 3]]
    assert rt.greedy_traversal_clusters(chain, 10) == [[0, 1, 2, 3]]
    assert rt.greedy_traversal_clusters(chain, 1) == [[0], [1], [2], [3]]
    # a doc listing itself is skipped as already seen
    assert rt.greedy_traversal_clusters({0: [0, 1], 1: [1, 0]}, 5) == [[0, 1]]


@pytest.mark.parametrize("seed", range(5))
def test_cluster_invariants_random_tables(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    knn = {d: rng.choice(n, size=min(n, int(rng.integers(0, 6))), replace=False).tolist() for d in range(n)}
    for size in (1, 2, 3, 7):
        clusters = rt.greedy_traversal_clusters(knn, size)
        flat = [d for c in clusters for d in c]
        assert sorted(flat) == list(range(n))           # every doc in exactly one cluster
        assert all(1 <= len(c) <= size for c in clusters)
        assert [c[0] for c in clusters] == sorted(c[0] for c in clusters)  # smallest-unseen starts
        for c in clusters:                              # each step follows a kNN edge
            assert all(b in knn[a] for a, b in itertools.pairwise(c))


def test_cluster_invariants_toy_corpus():
    corpus = rt.build_toy_corpus()
    for k in (1, 3, 5):
        knn = rt.knn_table(corpus.texts, k)
        for size in (2, 4, 5, 6):
            clusters = rt.greedy_traversal_clusters(knn, size)
            assert sorted(d for c in clusters for d in c) == list(range(50))
            assert all(len(c) <= size for c in clusters)
    # the title repeats the town, so size-5 clusters over 5-NN are exactly the ten towns
    clusters = rt.greedy_traversal_clusters(rt.knn_table(corpus.texts, 5), 5)
    assert len(clusters) == 10
    assert all(sorted(c) == list(range(5 * i, 5 * i + 5)) for i, c in enumerate(clusters))


# ----------------------------------------------------------------------------- bag of words


def test_bow_cosine_hand_values():
    assert rt.tokenize("The river flows. River!") == ["river", "flows", "river"]
    vecs, vocab = rt.bow_vectors(["river river flows", "river sea"])
    assert vocab == {"river": 0, "flows": 1, "sea": 2}
    np.testing.assert_array_equal(vecs, [[2, 1, 0], [1, 0, 1]])
    sim = rt.cosine_matrix(vecs, vecs)
    assert sim[0, 1] == pytest.approx(2 / math.sqrt(10), abs=1e-12)  # 0.632456
    np.testing.assert_allclose(np.diag(sim), 1.0)
    # words outside a given vocabulary are dropped; a zero vector scores 0
    q, _ = rt.bow_vectors(["ocean"], vocab)
    np.testing.assert_array_equal(rt.cosine_matrix(q, vecs), [[0.0, 0.0]])


def test_knn_table_and_baseline_ranking():
    texts = ["apple", "apple pear", "pear", "apple"]
    # doc 0: doc 3 (cos 1), doc 1 (1/sqrt 2), doc 2 (0); itself excluded
    assert rt.knn_table(texts, 3)[0] == [3, 1, 2]
    assert rt.knn_table(texts, 2) == {0: [3, 1], 1: [0, 2], 2: [1, 0], 3: [0, 1]}
    # scores [0, .707, 1, 0]: ties keep ascending id
    assert rt.bow_rank(["pear"], texts) == [[2, 1, 0, 3]]
    assert rt.bow_rank(["pear", "apple"], texts, top_k=2) == [[2, 1], [0, 3]]


# ----------------------------------------------------------------------------- dialogues, queries


def test_toy_corpus_deterministic():
    a, b = rt.build_toy_corpus(), rt.build_toy_corpus()
    assert a == b and len(a.texts) == 50
    assert all(len(field) == 50 for field in a)
    assert sorted(set(a.topics)) == sorted(a.topics[::5]) and len(set(a.topics)) == 10
    assert rt.build_toy_corpus(seed=1).texts != a.texts
    assert len(set(a.texts)) == 50


def test_dialogue_uses_followup_within_topic():
    corpus = rt.build_toy_corpus()
    turns = rt.build_dialogue([0, 1, 5], corpus)
    assert [t.gold for t in turns] == [0, 1, 5]
    assert turns[0].user == "When was Alderford founded?"
    assert turns[1].user == "Which river does the town lie on?"  # same town as turn 0
    assert turns[2].user == "When was Brackwater founded?"       # new town: named again
    assert [t.agent for t in turns] == [corpus.answers[0], corpus.answers[1], corpus.answers[5]]


def test_turn_queries_full_and_last_n():
    turns = [rt.Turn(0, "q0", "a0"), rt.Turn(1, "q1", "a1"), rt.Turn(2, "q2", "a2")]
    full = rt.turn_queries(turns)
    assert full == ["User: q0",
                    "User: q0\nAgent: a0\nUser: q1",
                    "User: q0\nAgent: a0\nUser: q1\nAgent: a1\nUser: q2"]
    assert rt.turn_queries(turns, last_n=5) == full  # 5 messages reach back to the start
    assert rt.turn_queries(turns, last_n=2) == ["User: q0", "Agent: a0\nUser: q1", "Agent: a1\nUser: q2"]
    # turn 3: U0 A0 U1 A1 U2 A2 U3 -> the last five
    assert rt.turn_queries(turns + [rt.Turn(3, "q3", "a3")], last_n=5)[-1] == \
        "User: q1\nAgent: a1\nUser: q2\nAgent: a2\nUser: q3"


def _run(corpus, clusters, last_n):
    ranked, gold = [], []
    for c in clusters:
        turns = rt.build_dialogue(c, corpus)
        ranked += rt.bow_rank(rt.turn_queries(turns, last_n), corpus.texts)
        gold += [t.gold for t in turns]
    return ranked, gold


def test_end_to_end_metrics_invariants():
    corpus = rt.build_toy_corpus()
    clusters = rt.greedy_traversal_clusters(rt.knn_table(corpus.texts, 5), 5)
    results = {}
    for last_n in (None, 5):
        ranked, gold = _run(corpus, clusters, last_n)
        assert len(gold) == 50 and all(len(r) == 20 for r in ranked)
        m = rt.retrieval_metrics(ranked, gold)
        assert set(m) == {f"{n}@{k}" for n in ("recall", "mrr", "ndcg") for k in rt.DEFAULT_KS}
        assert all(0.0 <= v <= 1.0 for v in m.values())
        for a, b in itertools.pairwise(rt.DEFAULT_KS):
            for n in ("recall", "mrr", "ndcg"):
                assert m[f"{n}@{a}"] <= m[f"{n}@{b}"] + 1e-12
        for k in rt.DEFAULT_KS:  # single gold: 1/r <= 1/log2(r+1) <= 1
            assert m[f"mrr@{k}"] <= m[f"ndcg@{k}"] + 1e-12 <= m[f"recall@{k}"] + 2e-12
        assert m["recall@1"] == m["mrr@1"] == m["ndcg@1"]
        ranks = rt.gold_ranks(ranked, gold)
        assert np.all(ranks[::5] == 1)  # every opening question names its town and its fact
        results[last_n] = ranks
    # up to turn 2 the last 5 messages are the whole history
    for t in range(3):
        np.testing.assert_array_equal(results[None][t::5], results[5][t::5])
    # full history keeps the town in view: the gold is always in the top 20; the window drops it
    assert np.all(np.isfinite(results[None]))
    assert not np.all(np.isfinite(results[5]))


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="size"):
        rt.greedy_traversal_clusters(SPEC_KNN, 0)
    with pytest.raises(ValueError, match=r"knn\[0\] lists 9"):
        rt.greedy_traversal_clusters({0: [9]}, 2)
    with pytest.raises(ValueError, match="one per turn"):
        rt.gold_ranks([[1]], [1, 2])
    with pytest.raises(ValueError, match="repeats"):
        rt.gold_ranks([[1, 1]], [1])
    with pytest.raises(ValueError, match="k must be"):
        rt.per_turn_metrics([[1]], [1], 0)
    with pytest.raises(ValueError, match="gold is empty"):
        rt.retrieval_metrics([], [])
    with pytest.raises(ValueError, match="last_n"):
        rt.turn_queries([rt.Turn(0, "q", "a")], last_n=0)
    with pytest.raises(ValueError, match="not a doc id"):
        rt.build_dialogue([50], rt.build_toy_corpus())
    with pytest.raises(ValueError, match="k must be"):
        rt.knn_table(["a", "b"], 2)
    with pytest.raises(ValueError, match="top_k"):
        rt.bow_rank(["a"], ["a"], top_k=0)


# ----------------------------------------------------------------------------- notebook


def test_notebook_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_retrieval_notebook_executes(tmp_path, monkeypatch):
    nb, text, has_png = execute_notebook(NOTEBOOK, tmp_path, monkeypatch, timeout=120)
    assert "clusters: 10" in text and "turns: 50" in text
    assert "recall@20" in text and "full history" in text and "last 5" in text
    assert has_png
