"""Tests for data.movielens on a hand-made fixture and on ml-latest-small."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from data import movielens
from data.errors import InputError
from pinsage_tf.graph import Split

T, V, X = int(Split.TRAIN), int(Split.VALIDATION), int(Split.TEST)

MOVIES = """movieId,title,genres
10,Alpha (1990),Action|Comedy
20,"Beta, The (2000) ",Comedy
30,Gamma,(no genres listed)
40,Delta (2010),Drama
"""
# Well-rated (>= 4) timestamps: 100 200 300 300 500 600 650 700 800 (9 of them).
# val_quantile 0.5 -> position 4 -> 500; test_quantile 0.75 -> position 6 -> 650.
# Periods: train t < 500, validation 500 <= t < 650, test t >= 650.
RATINGS = """userId,movieId,rating,timestamp
1,10,5.0,100
1,20,4.0,200
1,30,3.0,250
1,40,4.5,600
2,20,4.0,300
2,10,4.0,300
2,40,5.0,500
2,30,4.0,700
3,30,4.0,650
3,10,2.0,660
3,40,4.0,800
"""
TAGS = """userId,movieId,tag,timestamp
1,10,Funny Movie,150
2,40,spoiler,700
3,20,"classic, noir",499
"""
CONFIG = movielens.MovieLensConfig(val_quantile=0.5, test_quantile=0.75, hash_buckets=16384)


def _write(tmp_path, movies=MOVIES, ratings=RATINGS, tags=TAGS):
  for name, text in (("movies.csv", movies), ("ratings.csv", ratings), ("tags.csv", tags)):
    if text is not None:
      (tmp_path / name).write_text(text, encoding="utf-8")
  return str(tmp_path)


def test_split_title():
  assert movielens.split_title("Toy Story (1995)") == ("Toy Story", 1995)
  assert movielens.split_title("Justice League: Doom (2012) ") == ("Justice League: Doom", 2012)
  assert movielens.split_title("Death Note: Desu nôto (2006–2007)") == (
      "Death Note: Desu nôto", 2006)
  assert movielens.split_title("Babylon 5") == ("Babylon 5", None)


def test_fixture_graph(tmp_path):
  g = movielens.load_movielens(_write(tmp_path), CONFIG)
  np.testing.assert_array_equal(g.item_ids, ["10", "20", "30", "40"])
  np.testing.assert_array_equal(g.item_titles[1], "Beta, The (2000) ")
  assert (g.metadata["validation_cutoff"], g.metadata["test_cutoff"]) == (500, 650)
  # Train-period ratings (any value): user 1 -> 10, 20, 30 (the 3.0 too); user 2 -> 10, 20.
  # User 3 has nothing before 500, so is not a pivot.
  np.testing.assert_array_equal(g.pivot_ids, ["1", "2"])
  np.testing.assert_array_equal(g.pivot_to_item.indptr, [0, 3, 5])
  np.testing.assert_array_equal(g.pivot_to_item.indices, [0, 1, 2, 0, 1])
  np.testing.assert_array_equal(g.item_to_pivot.indptr, [0, 2, 4, 5, 5])
  np.testing.assert_array_equal(g.features.log_degree, np.log1p([2, 2, 1, 0]).astype(np.float32))
  # Well-rated sequences by (time, movieId):
  #   user 1: 10@100 20@200 40@600      -> (10,20,T) (20,40,V)
  #   user 2: 10@300 20@300 40@500 30@700 -> (10,20,T) (20,40,V) (40,30,X)
  #   user 3: 30@650 40@800             -> (30,40,X)
  assert list(zip(g.pairs.query.tolist(), g.pairs.positive.tolist(), g.pairs.split.tolist())) == [
      (0, 1, T), (1, 3, V), (0, 1, T), (1, 3, V), (3, 2, X), (2, 3, X)]
  # Held out: user 1 val {40}; user 2 val {40}, test {30}. User 3's 30, 40 dropped.
  np.testing.assert_array_equal(g.heldout.validation.indptr, [0, 1, 2])
  np.testing.assert_array_equal(g.heldout.validation.indices, [3, 3])
  np.testing.assert_array_equal(g.heldout.test.indptr, [0, 0, 1])
  np.testing.assert_array_equal(g.heldout.test.indices, [2])
  assert g.metadata["heldout_dropped_no_train_user"] == 2
  assert g.metadata["users_total"] == 3


def test_fixture_features(tmp_path):
  g = movielens.load_movielens(_write(tmp_path), CONFIG)
  genres = g.features.sparse_feature("genres")
  np.testing.assert_array_equal(genres.vocab, ["Action", "Comedy", "Drama"])
  np.testing.assert_array_equal(genres.values.indptr, [0, 2, 3, 3, 4])  # Gamma: no genre
  np.testing.assert_array_equal(genres.values.indices, [0, 1, 1, 2])
  title = g.features.sparse_feature("title")
  # crc32 % 16384: alpha 14698, beta 1123, the 11750, gamma 4209, delta 16089.
  np.testing.assert_array_equal(title.values.indptr, [0, 1, 3, 4, 5])
  np.testing.assert_array_equal(title.values.indices, [14698, 1123, 11750, 4209, 16089])
  tags = g.features.sparse_feature("tags")
  # Before 500 only: "Funny Movie" on 10 (funny 3269, movie 12911) and
  # "classic, noir" on 20 (noir 5071, classic 8621); "spoiler"@700 is ignored.
  np.testing.assert_array_equal(tags.values.indptr, [0, 2, 4, 4, 4])
  np.testing.assert_array_equal(tags.values.indices, [3269, 12911, 5071, 8621])
  assert (g.metadata["tags_used"], g.metadata["tags_ignored_after_cutoff"]) == (2, 1)
  # Years 1990, 2000, -, 2010: mean 2000, std sqrt(200 / 3).
  z = 10 / np.sqrt(200 / 3)
  np.testing.assert_allclose(g.features.dense, [[-z, 1], [0, 1], [0, 0], [z, 1]], rtol=1e-6)
  assert g.features.dense_names == ("year", "has_year")


def test_edge_min_rating_and_min_rating(tmp_path):
  config = movielens.MovieLensConfig(val_quantile=0.5, test_quantile=0.75, edge_min_rating=4.0)
  g = movielens.load_movielens(_write(tmp_path), config)
  # The 3.0 rating (user 1, movie 30) is no longer an edge.
  np.testing.assert_array_equal(g.pivot_to_item.indices, [0, 1, 0, 1])


def test_without_tags_file(tmp_path):
  g = movielens.load_movielens(_write(tmp_path, tags=None), CONFIG)
  assert [f.name for f in g.features.sparse] == ["genres", "title"]


@pytest.mark.parametrize("files,message", [
    ({"ratings": "userId,movieId,rating,timestamp\n1,10,abc,100\n"},
     r"ratings\.csv:2: column 'rating': 'abc' is not a finite number"),
    ({"ratings": "userId,movieId,rating,timestamp\n1,10,4.0,100\nx,10,4.0,100\n"},
     r"ratings\.csv:3: column 'userId': 'x' is not an integer"),
    ({"ratings": "userId,movieId,rating,timestamp\n1,10,4.0,1e9\n"},
     r"ratings\.csv:2: column 'timestamp'"),
    ({"ratings": "userId,movieId,timestamp\n1,10,100\n"},
     r"ratings\.csv:1: missing column 'rating'"),
    ({"ratings": ""}, r"ratings\.csv: file is empty"),
    ({"ratings": "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,99,4.0,100\n"},
     r"ratings\.csv:3: movieId 99 is not in movies\.csv"),
    ({"movies": MOVIES + "20,Again (2001),Drama\n"}, r"movies\.csv:6: duplicate movieId 20"),
    ({"tags": "userId,movieId,tag,timestamp\n1,77,x,1\n"},
     r"tags\.csv:2: movieId 77 is not in movies\.csv"),
    ({"tags": "userId,movieId,tag\n1,10,x\n"}, r"tags\.csv:1: missing column 'timestamp'"),
])
def test_bad_input_names_file_and_line(tmp_path, files, message):
  kwargs = {name: files.get(name, default) for name, default in
            (("movies", MOVIES), ("ratings", RATINGS), ("tags", TAGS))}
  with pytest.raises(InputError, match=message):
    movielens.load_movielens(_write(tmp_path, **kwargs), CONFIG)


def test_missing_movies_file(tmp_path):
  with pytest.raises(InputError, match=r"movies\.csv: file not found"):
    movielens.load_movielens(_write(tmp_path, movies=None), CONFIG)


def test_empty_test_split_is_an_error(tmp_path):
  # Well-rated times 100 200 300 400 500 -> cut-offs 300 (q=0.5) and 400 (q=0.75).
  # Only user 1 has consecutive engagements: (10,20) train, (20,30) validation;
  # users 2 and 3 rate once in the test period, so no test pair exists.
  ratings = ("userId,movieId,rating,timestamp\n1,10,5,100\n1,20,5,200\n1,30,5,300\n"
             "2,40,5,400\n3,10,5,500\n")
  with pytest.raises(InputError, match=r"ratings\.csv: the test split would have no item pair"):
    movielens.load_movielens(_write(tmp_path, ratings=ratings), CONFIG)


def test_config_rejects_bad_quantiles():
  with pytest.raises(ValueError, match="val_quantile < test_quantile"):
    movielens.MovieLensConfig(val_quantile=0.9, test_quantile=0.8)


def _read_raw(path):
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return rows


def test_ml_latest_small(datasets_dir):
  root = os.path.join(datasets_dir, "ml-latest-small")
  g = movielens.load_movielens(root, movielens.MovieLensConfig())
  ratings = _read_raw(os.path.join(root, "ratings.csv"))
  assert len(ratings) == 100_836
  user = np.array([int(r["userId"]) for r in ratings])
  movie = np.array([int(r["movieId"]) for r in ratings])
  rating = np.array([float(r["rating"]) for r in ratings])
  stamp = np.array([int(r["timestamp"]) for r in ratings])
  assert np.unique(user).size == 610
  # The cut-offs recomputed independently from the raw file.
  t_val, t_test = np.quantile(stamp[rating >= 4.0], [0.8, 0.9], method="lower")
  assert (g.metadata["validation_cutoff"], g.metadata["test_cutoff"]) == (t_val, t_test)
  train = stamp < t_val
  assert g.num_items == 9_742
  assert g.num_pivots == np.unique(user[train]).size == 518
  assert g.num_edges == int(train.sum()) == 79_870
  # Leakage rule: every graph edge is a rating strictly before the validation cut-off.
  time_of = {(u, m): t for u, m, t in zip(user.tolist(), movie.tolist(), stamp.tolist())}
  rows = np.repeat(np.arange(g.num_pivots), g.pivot_degrees())
  edge_times = [time_of[(int(g.pivot_ids[p]), int(g.item_ids[i]))]
                for p, i in zip(rows.tolist(), g.pivot_to_item.indices.tolist())]
  assert max(edge_times) < t_val
  assert g.summary()["pairs"] == {"train": 38_346, "validation": 4_818, "test": 4_807}
  assert (g.heldout.validation.nnz, g.heldout.test.nnz) == (246, 535)
  assert g.metadata["tags_used"] + g.metadata["tags_ignored_after_cutoff"] == 3_683
  assert g.features.sparse_feature("genres").vocab_size == 19


def test_leave_last_split_by_hand(tmp_path):
  config = movielens.MovieLensConfig(split="leave_last", hash_buckets=16384)
  graph = movielens.load_movielens(_write(tmp_path), config)
  # Sorted by (timestamp, movieId); items 10, 20, 30, 40 -> rows 0..3, users -> pivots 0..2.
  # u1: 10 20 30 40 -> graph {10, 20}, validation 30, test 40, latest graph movie 20.
  # u2: 10@300 20@300 (tie by movieId) 40 30 -> graph {10, 20}, validation 40, test 30.
  # u3: 30 10 40 (10 rated 2.0 still counts) -> graph {30}, validation 10, test 40.
  got = sorted(zip(graph.pairs.query.tolist(), graph.pairs.positive.tolist(),
                   graph.pairs.split.tolist(), graph.pairs.group.tolist()))
  assert got == sorted([(0, 1, T, 0), (0, 1, T, 1),
                        (1, 2, V, 0), (1, 3, V, 1), (2, 0, V, 2),
                        (1, 3, X, 0), (1, 2, X, 1), (2, 3, X, 2)])
  assert [sorted(graph.pivot_to_item.row(u).tolist()) for u in range(3)] == [[0, 1], [0, 1], [2]]
  assert [graph.heldout.test.row(u).tolist() for u in range(3)] == [[3], [2], [3]]
  assert [graph.heldout.validation.row(u).tolist() for u in range(3)] == [[2], [3], [0]]
  assert graph.metadata["item_protocol_exclude"] == "group_items"
  assert graph.metadata["protocol"]["split"] == "leave_last"
  assert "tags" not in [f.name for f in graph.features.sparse]
  with pytest.raises(ValueError, match="split must be one of"):
    movielens.MovieLensConfig(split="random")
