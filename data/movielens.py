"""MovieLens (ml-latest-small layout) -> `Graph`, with a leakage-free time split.

Inputs (in `input_dir`):
  ratings.csv  userId,movieId,rating,timestamp   (required)
  movies.csv   movieId,title,genres              (required; genres "|"-separated)
  tags.csv     userId,movieId,tag,timestamp      (optional)

Output graph ("movielens"):
* items = ALL movies of movies.csv in file order (item id = str(movieId)),
  so movies nobody rated in the training period still get an embedding from
  their features; `item_titles` = the titles.
* pivots = users with at least one training edge (pivot id = str(userId)).

Protocol (all parameters and the cut-offs are recorded in `metadata`):
1. *Well-rated* interactions are ratings with `rating >= min_rating`
   (default 4.0).
2. Two global cut-offs are the `val_quantile` / `test_quantile` quantiles
   (defaults 0.8 / 0.9, numpy method "lower", i.e. actual timestamps) of the
   well-rated interactions' timestamps. An interaction's period is
   train (t < validation cut-off), validation (t < test cut-off) or test.
3. Graph edges = ratings with `rating >= edge_min_rating` (default 0.0:
   all ratings) in the train period only. Nothing at or after the validation
   cut-off is an edge, so `log_degree` and neighborhoods see no future.
4. Item pairs (the paper's "related pins" protocol): each user's well-rated
   interactions sorted by (timestamp, movieId); every interaction and the
   next form (query, positive); the split is the period of the positive.
5. Held-out items (user protocol): per kept user, the well-rated movies in
   the validation / test period that are not among the user's training-edge
   movies. Users without training edges are not pivots; their held-out
   interactions are counted in `metadata["heldout_dropped_no_train_user"]`.

Leave-last split (`split="leave_last"`, the protocol of DGL's PinSAGE example):
every rating is an engagement (`min_rating` does not apply). Per user, ratings
sorted by (timestamp, movieId): the last is the test interaction (users with
>= 2 ratings), the one before it the validation interaction (users with >= 3),
the rest are the graph (ratings >= `edge_min_rating`). Training pairs are
consecutive graph ratings; the validation and test pair of a user are (the
user's latest graph movie, the held-out movie). Pair groups are pivot rows and
`metadata["item_protocol_exclude"] = "group_items"`: the evaluator ranks all
movies except the user's graph movies. tags.csv is not read (a tag's time says
nothing about which ratings were held out).

Features:
* "genres" (categorical): vocabulary = genre names sorted; the marker
  "(no genres listed)" is *not* a genre: such movies get an empty row.
* "title" (hashed_text): lower-cased letter/digit tokens of the title with the
  trailing "(year)" removed, crc32-hashed into `hash_buckets` buckets.
* "tags" (hashed_text): tokens of tags.csv tags whose timestamp is before the
  validation cut-off (later tags would leak held-out activity), same hashing.
* dense "year" = (year - mean) / std over the movies that have a year (0 when
  missing) and "has_year" in {0, 1}. The title year is static content, so its
  statistics over all movies leak nothing.

Bad input raises `InputError` naming the file and line; a validation or test
split without pairs raises `InputError` too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time

from absl import logging
import numpy as np

from data.errors import InputError
from data import features as features_lib
from data import sequences
from data import tables
from pinsage_tf import atomic
from pinsage_tf.graph import Graph, ItemPairs, Split, build_graph

NO_GENRES = "(no genres listed)"
# "Title (1995)", "Title (2006–2007)" (a series), possibly with trailing spaces.
SPLITS = ("time", "leave_last")
_YEAR = re.compile(r"\s*\((\d{4})(?:[\u2013-]\d{4})?\)\s*$")


@dataclasses.dataclass(frozen=True)
class MovieLensConfig:
  """Preparation parameters (see the module docstring for their role).

  Attributes:
    min_rating: ratings >= this are engagements (pairs, held-out items).
    edge_min_rating: ratings >= this in the train period are graph edges.
    val_quantile: quantile of well-rated timestamps where validation starts.
    test_quantile: quantile of well-rated timestamps where test starts.
    hash_buckets: hash space of the "title" and "tags" features.
    use_tags: read tags.csv when present.
    train_pair_window: training pairs link each engagement to the
      `train_pair_window` engagements before it (`sequences.split_log`).
    split: "time" (global time cut-offs) or "leave_last" (per user: last
      rating test, the one before validation; DGL's PinSAGE protocol).
  """

  min_rating: float = 4.0
  edge_min_rating: float = 0.0
  val_quantile: float = 0.8
  test_quantile: float = 0.9
  hash_buckets: int = 2**14
  use_tags: bool = True
  train_pair_window: int = 1
  split: str = "time"

  def __post_init__(self):
    if self.split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}.")
    if not 0.0 < self.val_quantile < self.test_quantile < 1.0:
      raise ValueError("need 0 < val_quantile < test_quantile < 1; got "
                       f"{self.val_quantile} and {self.test_quantile}.")
    if self.train_pair_window < 1:
      raise ValueError(f"train_pair_window must be >= 1, got {self.train_pair_window}.")
    if self.hash_buckets < 1:
      raise ValueError(f"hash_buckets must be a positive integer, got {self.hash_buckets}.")


def split_title(title: str) -> tuple[str, int | None]:
  """("Toy Story (1995)") -> ("Toy Story", 1995); no trailing year -> (title, None)."""
  match = _YEAR.search(title)
  if match is None:
    return title.strip(), None
  return title[:match.start()].strip(), int(match.group(1))


def _movie_ids(movies: tables.Table) -> np.ndarray:
  """int64 `[N]` movieIds of movies.csv; InputError at a repeated one."""
  movie_ids = tables.int_column(movies, "movieId")
  seen: set[int] = set()
  for movie, line in zip(movie_ids.tolist(), movies.lines.tolist()):
    if movie in seen:
      raise InputError(movies.path, line, f"duplicate movieId {movie}.")
    seen.add(movie)
  return movie_ids


def _item_rows(table: tables.Table, movie_ids: np.ndarray, known: np.ndarray,
               movies_path: str) -> np.ndarray:
  """Row of each referenced movieId; InputError at the first unknown one."""
  # `known` is sorted; searchsorted maps every id in one call.
  position = np.searchsorted(known[:, 0], movie_ids)
  position = np.minimum(position, known.shape[0] - 1)
  bad = known[position, 0] != movie_ids
  if np.any(bad):
    first = int(np.flatnonzero(bad)[0])
    raise InputError(table.path, int(table.lines[first]),
                     f"movieId {int(movie_ids[first])} is not in {os.path.basename(movies_path)}.")
  return known[position, 1]


def load_movielens(input_dir: str | os.PathLike, config: MovieLensConfig) -> Graph:
  """Reads an ml-latest-small style directory into a `Graph` (see module docstring).

  Raises:
    InputError: a missing file or column, a bad value (file:line), an unknown
      movieId, or an empty validation / test split.
  """
  input_dir = os.fspath(input_dir)
  start = time.perf_counter()
  movies_path = os.path.join(input_dir, "movies.csv")
  ratings_path = os.path.join(input_dir, "ratings.csv")
  tags_path = os.path.join(input_dir, "tags.csv")

  movies = tables.read_csv(movies_path, ["movieId", "title", "genres"])
  movie_ids = _movie_ids(movies)
  known = np.stack([movie_ids, np.arange(movie_ids.shape[0])], axis=1)
  known = known[np.argsort(known[:, 0])]
  logging.info("read %d movies from %s", movie_ids.shape[0], movies_path)

  ratings = tables.read_csv(ratings_path, ["userId", "movieId", "rating", "timestamp"])
  user = tables.int_column(ratings, "userId")
  item = _item_rows(ratings, tables.int_column(ratings, "movieId"), known, movies_path)
  rating = tables.float_column(ratings, "rating")
  timestamp = tables.int_column(ratings, "timestamp")
  logging.info("read %d ratings from %s (%.2fs)", ratings.num_rows, ratings_path,
               time.perf_counter() - start)

  leave_last = config.split == "leave_last"
  well_rated = np.ones_like(rating, bool) if leave_last else rating >= config.min_rating
  if not np.any(well_rated):
    raise InputError(ratings_path, None, f"no rating is >= min_rating={config.min_rating}.")
  # Sorted by user, then time, then movieId: ties resolve the same way on every run.
  order = np.lexsort((movie_ids[item], timestamp, user))
  raw_users, user_index = np.unique(user[order], return_inverse=True)
  user_index = user_index.astype(np.int64)
  if leave_last:
    cutoffs = None
    period = _leave_last_periods(user_index)
  else:
    cutoffs = sequences.time_cutoffs(timestamp[well_rated], config.val_quantile,
                                     config.test_quantile)
    period = cutoffs.period(timestamp[order])
  log = sequences.split_log(
      source=ratings_path, pivot=user_index, item=item[order], period=period,
      is_edge=rating[order] >= config.edge_min_rating, is_engagement=well_rated[order],
      num_items=movie_ids.shape[0], train_pair_window=config.train_pair_window)
  if leave_last:
    log = _latest_graph_item_pairs(
        log, user_index, item[order], period,
        in_graph=(period == int(Split.TRAIN)) & (rating[order] >= config.edge_min_rating))

  titles = movies.columns["title"]
  title_tokens, years = [], []
  for title in titles:
    stem, year = split_title(title)
    title_tokens.append(features_lib.tokenize(stem))
    years.append(np.nan if year is None else year)
  years = np.asarray(years, dtype=np.float64)
  has_year = np.isfinite(years)
  year_mean = float(years[has_year].mean()) if has_year.any() else 0.0
  year_std = float(years[has_year].std()) if has_year.sum() > 1 else 1.0
  year_std = year_std or 1.0
  dense = np.stack([np.where(has_year, (years - year_mean) / year_std, 0.0),
                    has_year.astype(np.float64)], axis=1).astype(np.float32)

  genre_lists = [[g for g in genres.split("|") if g and g != NO_GENRES]
                 for genres in movies.columns["genres"]]
  genre_vocab = sorted({g for genres in genre_lists for g in genres})
  sparse = [
      features_lib.categorical_feature("genres", genre_lists, genre_vocab),
      features_lib.hashed_text_feature("title", title_tokens, config.hash_buckets),
  ]

  tag_stats = {"tags_file": False}
  if config.use_tags and not leave_last and os.path.isfile(tags_path):
    tags = tables.read_csv(tags_path, ["userId", "movieId", "tag", "timestamp"])
    tables.int_column(tags, "userId")  # Only checked: tags are item features.
    tag_item = _item_rows(tags, tables.int_column(tags, "movieId"), known, movies_path)
    tag_time = tables.int_column(tags, "timestamp")
    # A tag written in the held-out periods describes held-out activity.
    usable = tag_time < cutoffs.validation
    tag_tokens: list[list[str]] = [[] for _ in titles]
    for row, text in zip(tag_item[usable].tolist(),
                         np.asarray(tags.columns["tag"], dtype=object)[usable].tolist()):
      tag_tokens[row].extend(features_lib.tokenize(text))
    sparse.append(features_lib.hashed_text_feature("tags", tag_tokens, config.hash_buckets))
    tag_stats = {"tags_file": True, "tags_used": int(usable.sum()),
                 "tags_ignored_after_cutoff": int((~usable).sum())}
    logging.info("read %d tags from %s, %d before the validation cut-off",
                 tags.num_rows, tags_path, int(usable.sum()))

  input_files = {name: atomic.sha256_file(os.path.join(input_dir, name))
                 for name in ("movies.csv", "ratings.csv", "tags.csv")
                 if os.path.isfile(os.path.join(input_dir, name))
                 and (name != "tags.csv" or (config.use_tags and not leave_last))}
  if leave_last:
    protocol = {
        "split": "leave_last",
        "engagement": "every rating",
        "edges": f"rating >= {config.edge_min_rating}, all but each user's last two ratings",
        "periods": "per user by (timestamp, movieId): last rating test, the one before "
                   "validation, the rest graph",
        "pairs": "train: consecutive graph ratings; validation/test: (the user's latest graph "
                 "movie, the held-out movie); group = pivot row",
        "item_protocol": "rank all movies except the user's graph movies",
        "no_genres": f"{NO_GENRES!r} -> empty genres row",
        "tags": "not used",
    }
    split_facts = {"item_protocol_exclude": "group_items", "primary_protocol": "item"}
  else:
    protocol = {
        "split": "time",
        "engagement": f"rating >= {config.min_rating}",
        "edges": f"rating >= {config.edge_min_rating} and timestamp < validation_cutoff",
        "periods": "train: t < validation_cutoff; validation: validation_cutoff <= t < "
                   "test_cutoff; test: t >= test_cutoff",
        "pairs": "consecutive engagements of a user by (timestamp, movieId); "
                 "split = period of the positive",
        "heldout": "user's engagements in the period not among the user's training edges",
        "no_genres": f"{NO_GENRES!r} -> empty genres row",
        "tags": "only tags with timestamp < validation_cutoff",
    }
    split_facts = {"validation_cutoff": int(cutoffs.validation),
                   "test_cutoff": int(cutoffs.test)}
  metadata = {
      "source": "movielens",
      "config": dataclasses.asdict(config),
      "input_sha256": input_files,
      "protocol": protocol,
      **split_facts,
      "ratings": int(ratings.num_rows),
      "well_rated": int(well_rated.sum()),
      "users_total": int(raw_users.shape[0]),
      "heldout_dropped_no_train_user": log.dropped_heldout,
      "year_mean": year_mean,
      "year_std": year_std,
      **tag_stats,
  }
  graph = build_graph(
      name="movielens",
      item_ids=movie_ids.astype(str),
      pivot_ids=raw_users[log.pivot_rows].astype(str),
      edge_items=log.edge_items, edge_pivots=log.edge_pivots,
      dense=dense, dense_names=("year", "has_year"), sparse=sparse,
      pairs=log.pairs, heldout=log.heldout, item_titles=titles, metadata=metadata)
  logging.info("built movielens graph in %.2fs", time.perf_counter() - start)
  return graph


def _leave_last_periods(user_index: np.ndarray) -> np.ndarray:
  """int8 `[K]` period of each rating of a log sorted by user then time:
  last = TEST (>= 2 ratings), the one before = VALIDATION (>= 3), else TRAIN."""
  count = np.bincount(user_index)
  start = np.concatenate([[0], np.cumsum(count)[:-1]])
  from_end = count[user_index] - 1 - (np.arange(user_index.shape[0]) - start[user_index])
  period = np.full(user_index.shape, int(Split.TRAIN), np.int8)
  size = count[user_index]
  period[(from_end == 0) & (size >= 2)] = int(Split.TEST)
  period[(from_end == 1) & (size >= 3)] = int(Split.VALIDATION)
  return period


def _latest_graph_item_pairs(log: sequences.LogSplit, user_index: np.ndarray,
                             item: np.ndarray, period: np.ndarray,
                             in_graph: np.ndarray) -> sequences.LogSplit:
  """`log` with validation/test pairs (latest graph item of the user, held-out item)
  and every pair's group a pivot row (users without graph ratings have no pairs)."""
  row_of = np.full(int(user_index.max()) + 1, -1, np.int64)
  row_of[log.pivot_rows] = np.arange(log.pivot_rows.shape[0])
  train = log.pairs.split == int(Split.TRAIN)
  query = [log.pairs.query[train]]
  positive = [log.pairs.positive[train]]
  split = [log.pairs.split[train]]
  group = [row_of[log.pairs.group[train]].astype(np.int32)]
  last_position = np.full(row_of.shape[0], -1, np.int64)
  graph_positions = np.flatnonzero(in_graph)
  np.maximum.at(last_position, user_index[graph_positions], graph_positions)
  latest = np.where(last_position >= 0, item[np.maximum(last_position, 0)], -1)
  for s in (Split.VALIDATION, Split.TEST):
    held = np.flatnonzero((period == int(s)) & (latest[user_index] >= 0))
    keep = latest[user_index[held]] != item[held]
    held = held[keep]
    query.append(latest[user_index[held]].astype(np.int32))
    positive.append(item[held].astype(np.int32))
    split.append(np.full(held.shape, int(s), np.int8))
    group.append(row_of[user_index[held]].astype(np.int32))
  pairs = ItemPairs(query=np.concatenate(query), positive=np.concatenate(positive),
                    split=np.concatenate(split), group=np.concatenate(group))
  return dataclasses.replace(log, pairs=pairs)
