"""Attention's forward and backward: jaxworld's kernel
(jaxworld/models/attention.py, `backbone.attention="jaxworld"`) against
autodiff of jax.nn.dot_product_attention's XLA path (the default, "xla").

    python bench/attention_speed.py [--shape B,L,M,K] [--causal] [--rounds 3]

Default shape: spatial attention of the Jasmine-sized tokenizer
(configs/scale/tokenizer_jasmine.toml): 4 windows x 16 frames = 64 sequences
of 256 tokens, 4 heads of 32. Prints the median time of a jitted
value-and-grad of each, over `--rounds` interleaved rounds of 10 calls.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shape", default="64,256,4,32")
  parser.add_argument("--causal", action="store_true")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp

  from jaxworld.models.attention import dot_product_attention

  shape = tuple(int(s) for s in args.shape.split(","))
  q, k, v = (jax.random.normal(jax.random.key(i), shape) for i in range(3))
  paths = {
      "jax.nn.dot_product_attention (xla)": lambda q, k, v:
          jax.nn.dot_product_attention(q, k, v, is_causal=args.causal),
      "jaxworld attention.py": lambda q, k, v: dot_product_attention(
          q, k, v, is_causal=args.causal, implementation="jaxworld"),
  }
  steps = {name: jax.jit(jax.value_and_grad(
      lambda q, k, v, f=f: jnp.sum(f(q, k, v) ** 2), (0, 1, 2)))
           for name, f in paths.items()}
  for step in steps.values():
    jax.block_until_ready(step(q, k, v))
  times = {name: [] for name in steps}
  for _ in range(args.rounds):
    for name, step in steps.items():
      for _ in range(10):
        start = time.perf_counter()
        jax.block_until_ready(step(q, k, v))
        times[name].append(time.perf_counter() - start)
  print(f"shape [B, L, M, K] = {list(shape)}, causal={args.causal}, "
        f"forward + backward, median of {10 * args.rounds} calls:")
  medians = {name: statistics.median(t) for name, t in times.items()}
  for name, seconds in medians.items():
    print(f"  {name:36s} {seconds * 1e3:8.1f} ms")
  ours, theirs = medians["jaxworld attention.py"], medians[
      "jax.nn.dot_product_attention (xla)"]
  print(f"  jaxworld's is {theirs / ours:.2f}x as fast")


if __name__ == "__main__":
  main()
