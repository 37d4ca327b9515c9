"""Ranking metrics: HR@10 / NDCG@10 with sampled negatives, full-ranking Recall@20 / NDCG@20."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from securefedrec.data import Dataset, Ratings
from securefedrec.metrics import RankingTask, evaluate, expected_hits
from securefedrec.models.base import RatingsByUser
from tests.data.fake_models import FixedScores


def _ratings(rows: list[tuple[int, int, float, int]]) -> Ratings:
    if not rows:
        return Ratings.empty()
    u, i, r, t = zip(*rows, strict=True)
    return Ratings(np.array(u), np.array(i), np.array(r, np.float32), np.array(t, np.int64))


def _brute(scores: np.ndarray, candidates: list[int], relevant: set[int],
           k: int) -> tuple[float, float, float]:
    """(hit of the one relevant, recall, ndcg) averaged over every order of the candidates that sorts
    them by score, highest first (ties in every order): the expectation under random tie-breaking."""
    hits = recalls = ndcgs = 0.0
    orders = 0
    for perm in itertools.permutations(candidates):
        if any(scores[a] < scores[b] for a, b in itertools.pairwise(perm)):
            continue
        orders += 1
        top = perm[:k]
        hits += float(any(i in relevant for i in top))
        recalls += sum(i in relevant for i in top) / len(relevant)
        dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(top) if i in relevant)
        ideal = sum(1 / math.log2(r + 2) for r in range(min(len(relevant), k)))
        ndcgs += dcg / ideal
    return hits / orders, recalls / orders, ndcgs / orders


def _tiny() -> tuple[Dataset, np.ndarray]:
    """4 users, 8 items, implicit; user 3 has no test item. Scores with ties."""
    train = _ratings([(0, 0, 1, 1), (0, 1, 1, 2), (1, 2, 1, 1), (2, 3, 1, 1), (2, 4, 1, 2), (3, 5, 1, 1)])
    validation = _ratings([(0, 2, 1, 3), (1, 3, 1, 2)])
    test = _ratings([(0, 3, 1, 4), (1, 4, 1, 3), (1, 6, 1, 3), (2, 0, 1, 3)])
    data = Dataset("tiny", train, test, tuple("abcd"), tuple("ABCDEFGH"), (0.0, 1.0), 1.0,
                   validation=validation, feedback="implicit")
    table = np.array([
        [9, 9, 9, 0.5, 0.5, 0.5, 0.2, 0.5],   # user 0: target 3 tied with 4, 5, 7
        [0, 0, 0, 0, 0.3, 0.9, 0.3, 0.3],     # user 1: test items 4 and 6 tied with 7, below 5
        [0.1, 0.2, 0.3, 0.0, 0.0, 0.4, 0.5, 0.6],  # user 2: target 0 below 5 candidates
        [1, 1, 1, 1, 1, 1, 1, 1],             # user 3: no test item
    ], np.float64)
    return data, table


@pytest.mark.parametrize("k", [1, 2, 3])
def test_metrics_match_a_brute_force_reference_with_ties(k: int) -> None:
    data, table = _tiny()
    task = RankingTask.build(data, negatives=3, seed=5)
    model = FixedScores(table)
    ev = evaluate(torch.zeros(1, dtype=torch.float64), model, RatingsByUser(data.train, 4), data.test,
                  data.scale, task=task, errors=False, k=k, k_full=k, local=model.init_local(4, torch.float32,
                                                                                         torch.Generator()))
    every = data.all_ratings()
    hr = nd = rec = ndf = 0.0
    users_sampled = users_full = 0
    for u in range(4):
        target = task.targets[u]
        if target < 0:
            continue
        negs = [int(i) for i in task.negatives[u] if i >= 0]
        assert not set(negs) & set(every.items[every.users == u].tolist())  # never interacted with
        hit, _, ndcg = _brute(table[u], [int(target), *negs], {int(target)}, k)
        hr, nd, users_sampled = hr + hit, nd + ndcg, users_sampled + 1
        known = (set(data.train.items[data.train.users == u])
                 | set(data.validation.items[data.validation.users == u]))
        relevant = set(data.test.items[data.test.users == u].tolist())
        candidates = [i for i in range(8) if i not in known or i in relevant]
        _, recall, ndcg_full = _brute(table[u], candidates, relevant, k)
        rec, ndf, users_full = rec + recall, ndf + ndcg_full, users_full + 1
    assert task.targets.tolist() == [3, 6, 0, -1]  # latest; a tie (user 1 at time 3) -> higher item
    assert users_sampled == 3 and ev.ranked_users == 3
    assert ev.hr == pytest.approx(hr / 3) and ev.ndcg == pytest.approx(nd / 3)
    assert ev.recall == pytest.approx(rec / users_full) and ev.ndcg_full == pytest.approx(ndf / users_full)
    assert ev.rmse is None and ev.mae is None


def test_a_constant_scorer_gets_hr_at_10_of_one_in_ten_not_more() -> None:
    users, items = 50, 400
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 1.0, t) for u in range(users)
            for t, i in enumerate(rng.choice(items, 6, replace=False))]
    every = _ratings(rows)
    last = every.timestamps == 5
    data = Dataset("c", every.subset(~last), every.subset(last), tuple(map(str, range(users))),
                   tuple(map(str, range(items))), (0.0, 1.0), 1.0, feedback="implicit")
    task = RankingTask.build(data, negatives=99, seed=1)
    assert (task.negatives >= 0).all()
    model = FixedScores(np.zeros((users, items)))
    ev = evaluate(torch.zeros(1, dtype=torch.float64), model, RatingsByUser(data.train, users), data.test,
                  data.scale, task=task, errors=False, local=model.init_local(users, torch.float32,
                                                                              torch.Generator()))
    assert ev.hr == pytest.approx(10 / 100)
    assert ev.ndcg == pytest.approx(sum(1 / math.log2(r + 2) for r in range(10)) / 100)
    assert ev.recall == pytest.approx(20 / (items - 5))  # 1 relevant among the 395 unseen items


def test_expected_hits_at_the_edges() -> None:
    above = torch.tensor([0, 9, 10, 5, 0])
    tied = torch.tensor([0, 0, 0, 9, 99])
    hit, dcg = expected_hits(above, tied, 10)
    np.testing.assert_allclose(hit.numpy(), [1, 1, 0, 0.5, 0.1])
    assert dcg[0] == pytest.approx(1.0) and dcg[1] == pytest.approx(1 / math.log2(11)) and dcg[2] == 0
    assert dcg[3] == pytest.approx(sum(1 / math.log2(r + 2) for r in range(5, 10)) / 10)


def test_a_perfect_scorer_gets_one_and_the_candidates_are_target_and_negatives() -> None:
    data, _ = _tiny()
    task = RankingTask.build(data, negatives=3, seed=0)
    table = np.zeros((4, 8))
    for u, i in zip(data.test.users, data.test.items, strict=True):
        table[u, i] = 1.0
    model = FixedScores(table)
    ev = evaluate(torch.zeros(1, dtype=torch.float64), model, RatingsByUser(data.train, 4), data.test,
                  data.scale, task=task, errors=False,
                  local=model.init_local(4, torch.float32, torch.Generator()))
    assert ev.hr == 1.0 and ev.ndcg == 1.0 and ev.recall == 1.0 and ev.ndcg_full == 1.0
    asked = model.calls[0].numpy()
    np.testing.assert_array_equal(asked[:3, 0], task.targets[:3])
    np.testing.assert_array_equal(np.where(task.negatives >= 0, asked[:, 1:], -1), task.negatives)


def test_explicit_targets_are_the_latest_held_out_rating_of_4_or_more() -> None:
    train = _ratings([(0, 0, 5, 1), (1, 0, 2, 1)])
    test = _ratings([(0, 1, 5, 2), (0, 2, 3, 9), (0, 3, 4, 3), (1, 1, 3, 2)])
    data = Dataset("e", train, test, ("a", "b"), tuple("ABCDEF"), (1.0, 5.0), 1.0)
    task = RankingTask.build(data, negatives=2, seed=0)
    assert task.targets.tolist() == [3, -1]
    assert sorted(task.relevant.user_items(0).tolist()) == [1, 3] and len(task.relevant.user_items(1)) == 0
    assert set(task.negatives[0].tolist()) <= {4, 5}  # every rated item is out, whatever its rating
