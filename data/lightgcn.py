"""LightGCN/NGCF split files (e.g. Gowalla) -> `Graph`.

Inputs (in `input_dir`): `train.txt` and `test.txt`, one line per user,
`user item item ...` with 0-based integer ids separated by spaces (a line
may hold the user alone). Parsing is vectorised (one `bytes.split` and one
numpy conversion per file).

Output graph ("lightgcn"):
* items "0" .. str(N - 1) with N = 1 + the largest item id of both files,
  pivots (users) "0" .. str(M - 1) likewise; rows are the ids themselves.
* graph edges = the (user, item) pairs of train.txt (duplicates dropped)
  minus the validation hold-out below.
* no content features: dense dim 0, no sparse features; `log_degree` only.

The *user protocol* is the primary one for this dataset (the published
Recall@20 / NDCG@20 numbers are all-item ranking for each user with the
user's training items masked):
* `heldout.test` = test.txt;
* `heldout.validation`: for each user with >= 3 training items, a seeded
  random `val_fraction` of them (stochastically rounded, keeping >= 2 in
  training) is moved out of the graph edges into the validation hold-out.

Item-item pairs, so the paper's item protocol can run here too:
* TRAIN: for each user a seeded random permutation of the remaining training
  items; consecutive items form pairs in both directions, at most
  `max_pairs_per_user` directed pairs per user; with `pair_rounds` R > 1,
  R-1 further independent permutations add their pairs too (drawn after
  everything else, so the hold-outs and evaluation pairs do not change);
* VALIDATION: (a random remaining training item of the user, validation item);
* TEST: (a random remaining training item of the user, test item); test users
  without training items give no pair (counted in metadata).
Every pair's group (`ItemPairs.group`) is its user's row.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import logging
import numpy as np

from data.errors import InputError
from data import sequences
from data import tables
from pinsage_tf import atomic
from pinsage_tf.graph import CSR, Graph, HeldOut, ItemPairs, Split, build_graph

# 19 digits can exceed int64; ids this long are a format error anyway.
_MAX_DIGITS = 18


@dataclasses.dataclass(frozen=True)
class LightGCNConfig:
  """Preparation parameters (see the module docstring).

  Attributes:
    val_fraction: share of each eligible user's training items moved to the
      validation hold-out, in [0, 1).
    max_pairs_per_user: cap on directed TRAIN item pairs per user and round (>= 2).
    pair_rounds: independent permutations whose consecutive items give TRAIN
      pairs (>= 1).
    seed: seeds every random choice.
  """

  val_fraction: float = 0.05
  max_pairs_per_user: int = 50
  pair_rounds: int = 1
  seed: int = 0

  def __post_init__(self):
    if not 0.0 <= self.val_fraction < 1.0:
      raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}.")
    if self.max_pairs_per_user < 2:
      raise ValueError(f"max_pairs_per_user must be >= 2, got {self.max_pairs_per_user}.")
    if self.pair_rounds < 1:
      raise ValueError(f"pair_rounds must be >= 1, got {self.pair_rounds}.")


def read_user_items(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Parses a `user item item ...` file.

  Returns:
    (users, items, line_users): int64 `[K]` users and items, one entry per
    item token, in file order; int64 `[L]` the user of every non-blank line
    (including lines without items).

  Raises:
    InputError: missing or empty file, or a token that is not a
      non-negative integer (with its line).
  """
  path = tables.check_file(path)
  with open(path, "rb") as f:
    data = f.read()
  buf = np.frombuffer(data, dtype=np.uint8)
  digit = (buf >= ord("0")) & (buf <= ord("9"))
  newline = buf == ord("\n")
  space = (buf == ord(" ")) | (buf == ord("\t")) | (buf == ord("\r"))
  bad = ~(digit | newline | space)
  if np.any(bad):
    at = int(np.argmax(bad))
    line = int(np.count_nonzero(newline[:at])) + 1
    char = data[at:at + 1].decode("latin-1")
    raise InputError(path, line, f"unexpected character {char!r}: expected non-negative "
                     "integer ids separated by spaces (`user item item ...`).")
  # A token starts at a digit that follows a non-digit (or the file start).
  starts = np.flatnonzero(digit & ~np.concatenate([[False], digit[:-1]]))
  if starts.size == 0:
    raise InputError(path, None, "file is empty; expected lines `user item item ...`.")
  ends = np.flatnonzero(digit & ~np.concatenate([digit[1:], [False]]))
  too_long = ends - starts + 1 > _MAX_DIGITS
  if np.any(too_long):
    at = int(starts[np.argmax(too_long)])
    raise InputError(path, int(np.count_nonzero(newline[:at])) + 1,
                     f"id with more than {_MAX_DIGITS} digits.")
  values = np.array(data.split(), dtype=np.int64)
  line_of = np.cumsum(newline)[starts]
  first = np.concatenate([[True], line_of[1:] != line_of[:-1]])
  user_of_token = values[first][np.cumsum(first) - 1]
  return user_of_token[~first], values[~first], values[first]


def _positions(groups: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
  """For `groups` sorted: (0-based position of each entry in its group, group sizes)."""
  sizes = np.bincount(groups, minlength=num_groups)
  starts = np.cumsum(sizes) - sizes
  return np.arange(groups.shape[0]) - starts[groups], sizes


def load_lightgcn(input_dir: str | os.PathLike, config: LightGCNConfig) -> Graph:
  """Reads train.txt / test.txt into a `Graph` (see module docstring).

  Raises:
    InputError: a missing or empty file, a bad token (file:line), or no
      validation / test pair.
  """
  input_dir = os.fspath(input_dir)
  start = time.perf_counter()
  train_path = os.path.join(input_dir, "train.txt")
  test_path = os.path.join(input_dir, "test.txt")
  train_users, train_items, train_lines = read_user_items(train_path)
  test_users, test_items, test_lines = read_user_items(test_path)
  if train_items.size == 0:
    raise InputError(train_path, None, "no (user, item) interaction; lines need items.")
  if test_items.size == 0:
    raise InputError(test_path, None, "no (user, item) interaction, so the test split would "
                     "be empty.")
  num_items = int(max(train_items.max(), test_items.max())) + 1
  num_users = int(max(train_lines.max(), test_lines.max())) + 1
  logging.info("read %d train and %d test interactions (%d users, %d items) in %.2fs",
               train_items.size, test_items.size, num_users, num_items,
               time.perf_counter() - start)

  rng = np.random.default_rng(config.seed)
  keys = sequences.unique_sorted(train_users * num_items + train_items)
  duplicates = int(train_items.size - keys.size)
  user, item = keys // num_items, keys % num_items
  # A random permutation inside each user's block: sort by (user, random key).
  order = np.lexsort((rng.random(keys.size), user))
  user, item = user[order], item[order]
  pos, count = _positions(user, num_users)

  num_val = np.floor(config.val_fraction * count + rng.random(num_users)).astype(np.int64)
  num_val = np.where(count >= 3, np.minimum(num_val, count - 2), 0)
  is_val = pos < num_val[user]
  val_user, val_item = user[is_val], item[is_val]
  user, item, pos = user[~is_val], item[~is_val], pos[~is_val] - num_val[user[~is_val]]
  remaining = count - num_val
  first_train = np.cumsum(remaining) - remaining

  # Consecutive items of the (still random) order: links pos -> pos + 1.
  links = np.minimum(remaining - 1, config.max_pairs_per_user // 2)
  link = pos < links[user]
  a, b, ab_user = item[link], item[np.flatnonzero(link) + 1], user[link]

  def random_train_item(users: np.ndarray) -> np.ndarray:
    offset = np.floor(rng.random(users.shape[0]) * remaining[users]).astype(np.int64)
    return item[first_train[users] + offset]

  test_keys = sequences.unique_sorted(test_users * num_items + test_items)
  test_user, test_item = test_keys // num_items, test_keys % num_items
  has_train = remaining[test_user] > 0
  val_query = random_train_item(val_user)
  test_query = random_train_item(test_user[has_train])

  # Further rounds: a fresh permutation inside each user's block (`user` is sorted).
  rounds_a, rounds_b, rounds_user = [a], [b], [ab_user]
  for _ in range(1, config.pair_rounds):
    order = np.lexsort((rng.random(user.size), user))
    round_user, round_item = user[order], item[order]
    round_pos = np.arange(round_user.size) - first_train[round_user]
    link = round_pos < links[round_user]
    rounds_a.append(round_item[link])
    rounds_b.append(round_item[np.flatnonzero(link) + 1])
    rounds_user.append(round_user[link])
  a, b = np.concatenate(rounds_a), np.concatenate(rounds_b)
  ab_user = np.concatenate(rounds_user)

  query = np.concatenate([a, b, val_query, test_query])
  positive = np.concatenate([b, a, val_item, test_item[has_train]])
  split = np.concatenate([np.full(2 * a.size, int(Split.TRAIN), np.int8),
                          np.full(val_item.size, int(Split.VALIDATION), np.int8),
                          np.full(int(has_train.sum()), int(Split.TEST), np.int8)])
  group = np.concatenate([ab_user, ab_user, val_user, test_user[has_train]])
  pairs = ItemPairs(query.astype(np.int32), positive.astype(np.int32), split,
                    group.astype(np.int32))
  if pairs.count(Split.TEST) == 0:
    raise InputError(test_path, None, "no test user has a training item, so the test "
                     "split would be empty.")
  if config.val_fraction > 0 and pairs.count(Split.VALIDATION) == 0:
    raise InputError(train_path, None, "no user has >= 3 training items, so the validation "
                     "split would be empty; pass --val_fraction=0.")

  heldout = HeldOut(validation=CSR.from_pairs(val_user, val_item, num_users),
                    test=CSR.from_pairs(test_user, test_item, num_users))
  metadata = {
      "source": "lightgcn",
      "config": dataclasses.asdict(config),
      "input_sha256": {name: atomic.sha256_file(os.path.join(input_dir, name))
                       for name in ("train.txt", "test.txt")},
      "primary_protocol": "user (heldout: all-item ranking, training items masked)",
      "protocol": {
          "edges": "train.txt minus the validation hold-out",
          "heldout_validation": "seeded val_fraction of each user's train items "
                                "(users with >= 3, keeping >= 2)",
          "heldout_test": "test.txt",
          "train_pairs": "consecutive items of a seeded permutation per user, both "
                         "directions, capped at max_pairs_per_user, pair_rounds "
                         "independent permutations",
          "eval_pairs": "(random remaining train item of the user, held-out item)",
      },
      "train_interactions": int(train_items.size),
      "duplicate_train_interactions": duplicates,
      "test_interactions_without_train_user": int((~has_train).sum()),
  }
  graph = build_graph(
      name="lightgcn",
      item_ids=np.arange(num_items).astype(str),
      pivot_ids=np.arange(num_users).astype(str),
      edge_items=item, edge_pivots=user,
      pairs=pairs, heldout=heldout, metadata=metadata)
  logging.info("built lightgcn graph in %.2fs", time.perf_counter() - start)
  return graph
