"""MTR-Suite pieces for conversational retrieval: clusters, dialogues, per-turn ranking metrics.

Paper: MTR-Suite (multi-turn retrieval). A dialogue is seeded by a cluster of related documents,
one gold document per turn; the retriever sees the conversation so far as its query. The pieces:

    clusters  greedy traversal over a kNN table: start at the smallest unseen doc, walk to the first
              unseen neighbour of the current doc, close at `size` docs or a dead end (the official
              code starts from an arbitrary unseen doc; smallest-unseen makes it deterministic)
    dialogue  turn t asks about gold doc cluster[t]; a turn whose gold shares the previous turn's
              topic uses the follow-up form of the question (an explicit reference, "the town")
    query     "User: ..." / "Agent: ..." lines of every earlier turn plus the current user message,
              or only the last 5 of those messages
    metrics   single gold per turn, rank r (1-based, inf when not retrieved):
              recall@k = [r <= k], MRR@k = [r <= k] / r, NDCG@k = [r <= k] / log2(r + 1)

A small deterministic corpus (`build_toy_corpus`: 10 towns x 5 facts from templates), a
bag-of-words cosine kNN table and a bag-of-words baseline retriever make the metrics run end to end
on CPU with numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_KS",
    "ToyCorpus",
    "Turn",
    "bow_rank",
    "bow_vectors",
    "build_dialogue",
    "build_toy_corpus",
    "cosine_matrix",
    "gold_ranks",
    "greedy_traversal_clusters",
    "knn_table",
    "per_turn_metrics",
    "retrieval_metrics",
    "tokenize",
    "turn_queries",
]

DEFAULT_KS = (1, 3, 5, 20)  # the paper's cut-offs
_WORD = re.compile(r"[a-z0-9]+")
# Function words carry no topic; dropping them keeps the cosine about content words.
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "at", "by", "does", "every", "for", "from", "in", "is", "it", "its", "of",
    "on", "the", "to", "was", "what", "when", "which", "who", "user", "agent"})


# ----------------------------------------------------------------------------- clustering


def greedy_traversal_clusters(knn: Mapping[int, Sequence[int]] | Sequence[Sequence[int]],
                              size: int) -> list[list[int]]:
    """Greedy traversal clustering over a kNN table.

    knn: doc -> neighbours, nearest first (a mapping, or a sequence indexed by doc id). Every doc is
    a key; every neighbour must be a doc. Returns clusters in creation order, each in visiting
    order; every doc lands in exactly one cluster of at most `size` docs.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    table = dict(knn) if isinstance(knn, Mapping) else dict(enumerate(knn))
    docs = sorted(table)
    for doc, neighbours in table.items():
        for n in neighbours:
            if n not in table:
                raise ValueError(f"knn[{doc}] lists {n!r}, which is not a doc (docs are the table's keys)")
    seen: set[int] = set()
    clusters: list[list[int]] = []
    for start in docs:  # ascending, so the first unseen one is the smallest unseen
        if start in seen:
            continue
        cluster, current = [start], start
        seen.add(start)
        while True:
            nxt = next((n for n in table[current] if n not in seen), None)
            if nxt is None or len(cluster) == size:
                break
            cluster.append(nxt)
            seen.add(nxt)
            current = nxt
        clusters.append(cluster)
    return clusters


# ----------------------------------------------------------------------------- dialogues


class Turn(NamedTuple):
    gold: int   # the doc this turn is about
    user: str   # the user's question
    agent: str  # the agent's answer


class ToyCorpus(NamedTuple):
    """Parallel tuples, one entry per doc (index = doc id)."""

    texts: tuple[str, ...]      # the document text the retriever indexes
    topics: tuple[str, ...]     # what the doc is about (a follow-up refers back to it)
    questions: tuple[str, ...]  # question naming the topic explicitly
    followups: tuple[str, ...]  # same question with an explicit reference instead of the name
    answers: tuple[str, ...]    # the agent's answer


def build_dialogue(cluster: Sequence[int], corpus: ToyCorpus) -> list[Turn]:
    """One turn per doc of `cluster`, in order; a turn whose topic equals the previous turn's topic
    asks the follow-up form (the reference only resolves through the history)."""
    n = len(corpus.texts)
    if len(cluster) == 0:
        raise ValueError("cluster must hold at least one doc id")
    turns: list[Turn] = []
    for t, doc in enumerate(cluster):
        if not 0 <= doc < n:
            raise ValueError(f"cluster[{t}] = {doc} is not a doc id of the corpus (0..{n - 1})")
        follow = t > 0 and corpus.topics[doc] == corpus.topics[cluster[t - 1]]
        turns.append(Turn(int(doc), corpus.followups[doc] if follow else corpus.questions[doc],
                          corpus.answers[doc]))
    return turns


def turn_queries(turns: Sequence[Turn], last_n: int | None = None) -> list[str]:
    """Query of each turn: the "User: ..."/"Agent: ..." lines of all earlier turns and the current
    "User: ..." line, joined by newlines; with `last_n`, only the last `last_n` of those messages."""
    if last_n is not None and (isinstance(last_n, bool) or not isinstance(last_n, int) or last_n < 1):
        raise ValueError(f"last_n must be None (full history) or an int >= 1, got {last_n!r}")
    messages: list[str] = []
    queries: list[str] = []
    for turn in turns:
        messages.append(f"User: {turn.user}")
        window = messages if last_n is None else messages[-last_n:]
        queries.append("\n".join(window))
        messages.append(f"Agent: {turn.agent}")
    return queries


# ----------------------------------------------------------------------------- metrics


def gold_ranks(ranked: Sequence[Sequence[int]], gold: Sequence[int]) -> np.ndarray:
    """1-based rank of each turn's gold doc in its ranked list; inf where it was not retrieved.

    ranked: N lists of doc ids, best first (lengths may differ). gold: [N]. Returns float64 [N].
    """
    if len(ranked) != len(gold):
        raise ValueError(f"ranked has {len(ranked)} lists but gold has {len(gold)} ids; need one per turn")
    ranks = np.full(len(gold), np.inf)
    for i, (lst, g) in enumerate(zip(ranked, gold)):
        lst = list(lst)
        if len(set(lst)) != len(lst):
            raise ValueError(f"ranked[{i}] repeats a doc id: {lst}")
        if g in lst:
            ranks[i] = lst.index(g) + 1
    return ranks


def per_turn_metrics(ranked: Sequence[Sequence[int]], gold: Sequence[int], k: int) -> dict[str, np.ndarray]:
    """recall@k, MRR@k, NDCG@k of each turn (single gold, so the ideal DCG is 1). Each float64 [N]."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    r = gold_ranks(ranked, gold)
    hit = r <= k
    safe = np.where(hit, r, 1.0)  # avoid inf arithmetic where the hit mask zeroes the value anyway
    return {"recall": hit.astype(np.float64),
            "mrr": np.where(hit, 1.0 / safe, 0.0),
            "ndcg": np.where(hit, 1.0 / np.log2(safe + 1.0), 0.0)}


def retrieval_metrics(ranked: Sequence[Sequence[int]], gold: Sequence[int],
                      ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Turn-averaged metrics: {"recall@k", "mrr@k", "ndcg@k"} for each k in `ks`."""
    if len(gold) == 0:
        raise ValueError("gold is empty; need at least one turn to average over")
    out: dict[str, float] = {}
    for k in ks:
        for name, vals in per_turn_metrics(ranked, gold, k).items():
            out[f"{name}@{k}"] = float(vals.mean())
    return out


# ----------------------------------------------------------------------------- bag of words


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words minus function words."""
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def bow_vectors(texts: Sequence[str], vocab: Mapping[str, int] | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Term-count vectors [N, V] float64 and the vocabulary (word -> column, first-seen order).
    With `vocab` given, words outside it are dropped."""
    if vocab is None:
        built: dict[str, int] = {}
        for text in texts:
            for w in tokenize(text):
                built.setdefault(w, len(built))
        vocab = built
    mat = np.zeros((len(texts), len(vocab)))
    for i, text in enumerate(texts):
        for w in tokenize(text):
            j = vocab.get(w)
            if j is not None:
                mat[i, j] += 1.0
    return mat, dict(vocab)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity [N, M] of rows of a [N, V] and b [M, V]; a zero row scores 0 everywhere."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a / np.where(na > 0, na, 1.0)) @ (b / np.where(nb > 0, nb, 1.0)).T


def _rank_rows(scores: np.ndarray, top_k: int) -> list[list[int]]:
    # Stable sort on -score: equal scores keep ascending doc id, so rankings are deterministic.
    order = np.argsort(-scores, axis=1, kind="stable")
    return [row[:top_k].tolist() for row in order]


def knn_table(texts: Sequence[str], k: int) -> dict[int, list[int]]:
    """Bag-of-words cosine kNN table over `texts`: doc -> its k nearest other docs, nearest first
    (ties by smaller id)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < len(texts):
        raise ValueError(f"k must be an int in [1, {len(texts) - 1}] (number of other docs), got {k!r}")
    vecs, _ = bow_vectors(texts)
    sim = cosine_matrix(vecs, vecs)
    np.fill_diagonal(sim, -np.inf)  # a doc is not its own neighbour
    return dict(enumerate(_rank_rows(sim, k)))


def bow_rank(queries: Sequence[str], doc_texts: Sequence[str], top_k: int = max(DEFAULT_KS)) -> list[list[int]]:
    """Baseline retriever: rank docs by bag-of-words cosine with each query (corpus vocabulary).
    Returns the top `top_k` doc ids per query, best first."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    doc_vecs, vocab = bow_vectors(doc_texts)
    query_vecs, _ = bow_vectors(queries, vocab)
    return _rank_rows(cosine_matrix(query_vecs, doc_vecs), top_k)


# ----------------------------------------------------------------------------- toy corpus

_TOWNS = ("Alderford", "Brackwater", "Cindervale", "Dunmere", "Eastholm",
          "Fernhollow", "Greyport", "Hollinsby", "Ironwick", "Juniper Bay")
_YEARS = ("1712", "1738", "1754", "1769", "1781", "1803", "1822", "1847", "1865", "1890")
_FOUNDERS = ("fishermen", "miners", "monks", "weavers", "farmers",
             "traders", "shipwrights", "shepherds", "millers", "brewers")
_RIVERS = ("Ashen", "Blackreed", "Coldwater", "Dove", "Elder",
           "Foxbrook", "Glint", "Heron", "Isel", "Jessamine")
_FESTIVALS = ("lantern", "harvest", "kite", "cheese", "boat",
              "music", "lamb", "apple", "salt", "candle")
_SEASONS = ("spring", "summer", "autumn", "winter")
_INDUSTRIES = ("glassmaking", "shipbuilding", "tin mining", "wool weaving", "cider pressing",
               "paper milling", "salt panning", "clockmaking", "pottery", "timber sawing")
_MAYORS = ("Ada Quill", "Bram Hollis", "Cora Vance", "Dmitri Ash", "Elin Marsh",
           "Felix Stone", "Greta Lowe", "Hugo Penn", "Iris Crane", "Jonas Reed")


def build_toy_corpus(seed: int = 0) -> ToyCorpus:
    """ConvRetrieval-style corpus of 50 short docs: 10 towns x 5 facts (founding, river, festival,
    industry, mayor), fact values assigned per town by a seeded permutation. Doc id = 5 * town + fact.
    Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    pick = {name: rng.permutation(len(_TOWNS)) for name in
            ("year", "founder", "river", "festival", "industry", "mayor")}
    seasons = rng.integers(0, len(_SEASONS), len(_TOWNS))
    texts, topics, questions, followups, answers = [], [], [], [], []

    def add(town, text, question, followup, answer):
        texts.append(text)
        topics.append(town)
        questions.append(question)
        followups.append(followup)
        answers.append(answer)

    for i, town in enumerate(_TOWNS):
        year, founder = _YEARS[pick["year"][i]], _FOUNDERS[pick["founder"][i]]
        river, festival = _RIVERS[pick["river"][i]], _FESTIVALS[pick["festival"][i]]
        industry, mayor = _INDUSTRIES[pick["industry"][i]], _MAYORS[pick["mayor"][i]]
        season = _SEASONS[seasons[i]]
        # The title repeats the town, so docs of one town are nearer than docs of one fact.
        add(town, f"{town}. {town} was founded in {year} by {founder}.",
            f"When was {town} founded?", "When was the town founded?", f"In {year}, by {founder}.")
        add(town, f"{town}. {town} lies on the {river} river.",
            f"Which river does {town} lie on?", "Which river does the town lie on?", f"The {river} river.")
        add(town, f"{town}. {town} celebrates the {festival} festival every {season}.",
            f"Which festival does {town} celebrate?", "Which festival does the town celebrate?",
            f"The {festival} festival, every {season}.")
        add(town, f"{town}. The main industry of {town} is {industry}.",
            f"What is the main industry of {town}?", "What is the main industry of the town?",
            f"{industry.capitalize()}.")
        add(town, f"{town}. {mayor} is the mayor of {town}.",
            f"Who is the mayor of {town}?", "Who is the mayor of the town?", f"{mayor}.")
    return ToyCorpus(tuple(texts), tuple(topics), tuple(questions), tuple(followups), tuple(answers))
