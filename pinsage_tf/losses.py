"""PinSage training losses: max-margin ranking and the sampled-softmax baseline.

Inputs (the output of `PinSageModel.embed_pairs`):

* `z_query`, `z_positive` float `[B, E]`: a labelled (query, positive) pair per row;
* `z_negative` float `[Nn, E]`: negatives shared by every query of the batch
  (the paper samples one set per minibatch, Sec. 3.3);
* `z_hard` float `[B, H, E]` with `hard_mask [B, H]` (1 = in use): each query's
  own hard negatives (curriculum training adds more of them each epoch);
* `negative_mask` float `[B, Nn]` (optional, 1 = in use): drops shared
  negatives that are the query's own query or positive item (an "accidental
  hit"; see `shared_negative_mask`);
* `bias` (optional, a `CandidateBias` of the model's item biases, see
  `PinSageConfig.item_bias`): added to every candidate's score, so a
  candidate i scores `z_q . z_i + b_i` (the query's own bias would cancel).
* `negative_log_count` (optional, sampled softmax only) float `[Nn]`: the log
  of each shared negative's expected number of occurrences in a batch's
  shared set (the "logQ correction" of sampled softmax, Bengio & Senecal;
  Yi et al. 2019 for in-batch negatives). Subtracting it from the negatives'
  logits makes `sum_n exp(s_n / t - log c_n)` an unbiased estimate of the
  sum over ALL items, so the loss approximates the full softmax whatever the
  negatives' sampler (uniform, degree-based, the batch's own positives).

In-batch negatives (the other queries' positives) are passed as more shared
negatives: concatenate them to `z_negative` with their own mask
(`shared_negative_mask(query, positive, positive)` drops the query's own
positive and any repeat of it) and their log expected counts.

How shared and hard negatives combine: a query's negative set is its valid
shared negatives plus its valid hard negatives, and every loss averages (or,
for softmax, normalises) over that one set -- the paper *adds* hard negatives
to the negative set of each query. A query with an empty negative set has
loss 0.

Both losses return the per-example loss `[B]`. Reduce with `average_loss`,
which divides the sum by the *global* batch size: under `MirroredStrategy`
each replica's gradient is then scaled so that their sum is the gradient of
the global mean (as `tf.nn.compute_average_loss`, which it wraps).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class CandidateBias(NamedTuple):
  """Item biases of the candidates: positive `[B]`, shared negatives `[Nn]`,
  hard negatives `[B, H]` (None when there are no hard negatives)."""

  positive: tf.Tensor
  negative: tf.Tensor
  hard: tf.Tensor | None = None

# Logit of an excluded candidate: exp() underflows to exactly 0 while staying
# finite, so a row with every candidate excluded still has no NaN.
_EXCLUDED_LOGIT = -1e9


def max_margin_loss(
    z_query: tf.Tensor,
    z_positive: tf.Tensor,
    z_negative: tf.Tensor,
    z_hard: tf.Tensor | None = None,
    hard_mask: tf.Tensor | None = None,
    negative_mask: tf.Tensor | None = None,
    margin: float = 0.1,
    bias: CandidateBias | None = None,
) -> tf.Tensor:
  """The paper's max-margin ranking loss (Sec. 3.3), per query.

  For each query q with positive i and negative set N_q (see the module
  docstring for how shared and hard negatives combine):

      loss_q = mean_{n in N_q} max(0, z_q . z_n - z_q . z_i + margin)

  Args:
    z_query: float `[B, E]`.
    z_positive: float `[B, E]`.
    z_negative: float `[Nn, E]` shared negatives.
    z_hard: optional float `[B, H, E]` per-query hard negatives.
    hard_mask: optional float `[B, H]`, 1 for hard negatives in use; None
      uses all of `z_hard`.
    negative_mask: optional float `[B, Nn]`, 1 for shared negatives in use;
      None uses all.
    margin: Delta, the required score gap.
    bias: optional item biases added to the candidates' scores.

  Returns:
    float32 `[B]` per-query loss.
  """
  positive_score, shared_scores, shared_valid, hard_scores, hard_valid = _scores(
      z_query, z_positive, z_negative, z_hard, hard_mask, negative_mask, bias)
  total = tf.reduce_sum(
      tf.nn.relu(shared_scores - positive_score[:, None] + margin) * shared_valid, axis=1)
  count = tf.reduce_sum(shared_valid, axis=1)
  if hard_scores is not None:
    total += tf.reduce_sum(
        tf.nn.relu(hard_scores - positive_score[:, None] + margin) * hard_valid, axis=1)
    count += tf.reduce_sum(hard_valid, axis=1)
  return tf.math.divide_no_nan(total, count)


def sampled_softmax_loss(
    z_query: tf.Tensor,
    z_positive: tf.Tensor,
    z_negative: tf.Tensor,
    z_hard: tf.Tensor | None = None,
    hard_mask: tf.Tensor | None = None,
    negative_mask: tf.Tensor | None = None,
    temperature: float = 0.1,
    bias: CandidateBias | None = None,
    negative_log_count: tf.Tensor | None = None,
) -> tf.Tensor:
  """Sampled-softmax cross-entropy, the paper's baseline loss, per query.

  Softmax over {positive} + N_q with logits `z_q . z / temperature`:

      loss_q = -log( exp(s_i / t) / (exp(s_i / t) + sum_{n in N_q} exp(s_n / t - c_n)) )

  with `c_n = negative_log_count[n]` for shared negatives and 0 otherwise
  (hard negatives are a curriculum, not an estimate of the full sum).

  Args:
    z_query, z_positive, z_negative, z_hard, hard_mask, negative_mask, bias:
      as in `max_margin_loss`.
    temperature: t > 0; with unit-norm embeddings the logits lie in
      [-1/t, 1/t], so a small t is needed for a peaked softmax.
    negative_log_count: optional float `[Nn]`, the logQ correction (module
      docstring); None = no correction.

  Returns:
    float32 `[B]` per-query loss (0 for a query with no negative).

  Raises:
    ValueError: `temperature` is not positive.
  """
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}.")
  positive_score, shared_scores, shared_valid, hard_scores, hard_valid = _scores(
      z_query, z_positive, z_negative, z_hard, hard_mask, negative_mask, bias)
  shared_logits = shared_scores / temperature
  if negative_log_count is not None:
    shared_logits -= tf.convert_to_tensor(negative_log_count, tf.float32)[None, :]
  logits = [positive_score[:, None] / temperature,
            tf.where(shared_valid > 0, shared_logits, _EXCLUDED_LOGIT)]
  if hard_scores is not None:
    logits.append(tf.where(hard_valid > 0, hard_scores / temperature, _EXCLUDED_LOGIT))
  logits = tf.concat(logits, axis=1)  # [B, 1 + Nn (+ H)]
  return tf.reduce_logsumexp(logits, axis=1) - logits[:, 0]


def average_loss(
    per_example_loss: tf.Tensor,
    global_batch_size: int | tf.Tensor | None = None,
    sample_weight: tf.Tensor | None = None,
) -> tf.Tensor:
  """Scalar loss: sum of the per-example losses / the GLOBAL batch size.

  Under a distribution strategy each replica sees `B` examples of a global
  batch of `B * num_replicas`; dividing by the global size makes the replicas'
  gradients sum to the gradient of the global mean.

  Args:
    per_example_loss: float `[B]`.
    global_batch_size: the global batch size; None = `B * num_replicas_in_sync`
      of the current replica context (B alone outside a strategy).
    sample_weight: optional float `[B]` multiplied into the losses first.

  Returns:
    float32 scalar.
  """
  return tf.nn.compute_average_loss(
      tf.cast(per_example_loss, tf.float32), sample_weight=sample_weight,
      global_batch_size=global_batch_size)


def shared_negative_mask(query: tf.Tensor | None, positive: tf.Tensor,
                         negative: tf.Tensor) -> tf.Tensor:
  """float32 `[B, Nn]`: 0 where shared negative n is query b's query or positive.

  Positions are those of a `Minibatch` (level K is deduplicated, so equal
  positions mean the same item).

  Args:
    query: int `[B]` positions of the queries, or None when the queries are
      not items of level K (pivot pairs): then only the positive is dropped.
    positive: int `[B]` positions of the positives.
    negative: int `[Nn]` positions of the shared negatives.
  """
  negative = negative[None, :]
  hit = tf.equal(positive[:, None], negative)
  if query is not None:
    hit = tf.logical_or(hit, tf.equal(query[:, None], negative))
  return 1.0 - tf.cast(hit, tf.float32)


def _scores(z_query, z_positive, z_negative, z_hard, hard_mask, negative_mask, bias=None):
  """Dot-product scores (plus item biases) and validity masks shared by both losses."""
  z_query = tf.convert_to_tensor(z_query, tf.float32)
  z_positive = tf.convert_to_tensor(z_positive, tf.float32)
  z_negative = tf.convert_to_tensor(z_negative, tf.float32)
  positive_score = tf.reduce_sum(z_query * z_positive, axis=-1)  # [B]
  shared_scores = tf.matmul(z_query, z_negative, transpose_b=True)  # [B, Nn]
  if negative_mask is None:
    shared_valid = tf.ones_like(shared_scores)
  else:
    shared_valid = tf.cast(negative_mask, tf.float32)
  hard_scores = hard_valid = None
  if z_hard is not None:
    z_hard = tf.convert_to_tensor(z_hard, tf.float32)
    hard_scores = tf.einsum("be,bhe->bh", z_query, z_hard)  # [B, H]
    hard_valid = (tf.ones_like(hard_scores) if hard_mask is None
                  else tf.cast(hard_mask, tf.float32))
  elif hard_mask is not None:
    raise ValueError("hard_mask was given without z_hard; pass both or neither.")
  if bias is not None:
    positive_score += tf.convert_to_tensor(bias.positive, tf.float32)
    shared_scores += tf.convert_to_tensor(bias.negative, tf.float32)[None, :]
    if hard_scores is not None:
      if bias.hard is None:
        raise ValueError("bias.hard is None but hard negatives were given.")
      hard_scores += tf.convert_to_tensor(bias.hard, tf.float32)
  return positive_score, shared_scores, shared_valid, hard_scores, hard_valid
