"""Watch a dynamics run learn: at every checkpoint, truth beside imagination
for a few held-out episodes, in TensorBoard (`tensorboard --logdir
<workdir>/tb`, tab IMAGES: `preview/strip` and the animated `preview/gif`).

Cheap by construction: `train.preview_episodes` episodes (0 turns it off)
are imagined by one compiled program (the tokenizer codes the first
`window - 1` real frames, then a scan of the kind's `dynamics_step` and the
tokenizer's `decode_frame` over a fixed-size sliding history imagines
`rollout.horizon` frames with the episodes' true actions), compiled at the
first checkpoint and reused at every later one. It reads the parameters and
never writes them, draws from its own key (`rollout.seed`), and reads the
eval split itself, so the trained numbers and the data stream are exactly
those of a run without it. Only dynamics runs on one process have it; a
failure is logged and training goes on.

Dimension keys: E episodes, T time, C context frames (window - 1), H/W
frame height/width.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxworld import media
from jaxworld.config import Config
from jaxworld.data import pipeline
from jaxworld.infer import latent_actions, sampler
from jaxworld.models.tokenizer import to_unit_float

log = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def imagine(kind: str, dynamics_graphdef: nnx.GraphDef,
            tokenizer_graphdef: nnx.GraphDef, horizon: int, options: Any,
            dynamics_params: sampler.Params, tokenizer_params: sampler.Params,
            context_ECHWC: jax.Array, actions_ET: jax.Array,
            rng_2: jax.Array) -> jax.Array:
  """u8 frames [E, horizon, H, W, 3] imagined after the C context frames.

  `actions_ET[:, t]` (T = C - 1 + horizon) is the action after frame t. The
  context is coded as the dynamics model trains on it (the tokenizer's
  `encode` of the window); each new frame is imagined from the last C.
  """
  c = context_ECHWC.shape[1]
  tokenizer = nnx.merge(tokenizer_graphdef, tokenizer_params)
  history_EC = tokenizer.encode(to_unit_float(context_ECHWC))
  # The C actions each step reads: those after its C history frames.
  actions_KEC = jnp.stack([actions_ET[:, k:k + c] for k in range(horizon)])

  def one_frame(carry, actions_EC):
    history_EC, rng_2 = carry
    new_E, rng_2 = sampler.dynamics_step(
        dynamics_graphdef, kind, dynamics_params, history_EC, actions_EC,
        rng_2, options)
    window_ET = jnp.concatenate([history_EC, new_E[:, None]], 1)
    frame_EHWC = sampler.decode_frame(tokenizer_graphdef, tokenizer_params,
                                      window_ET)
    return (window_ET[:, 1:], rng_2), frame_EHWC

  _, frames_KEHWC = jax.lax.scan(one_frame, (history_EC, rng_2), actions_KEC)
  return jnp.moveaxis(frames_KEHWC, 0, 1)


def truth_beside_imagination(cfg: Config, dynamics: nnx.Module,
                             tokenizer: nnx.Module, lam: nnx.Module | None,
                             frames_ETHWC: np.ndarray, actions_ET: np.ndarray
                             ) -> list[Any]:
  """One image per time step from the last real frame on: a row per
  episode, the truth left and the imagination right (media.side_by_side)."""
  c = cfg.data.window - 1
  horizon = min(cfg.rollout.horizon, frames_ETHWC.shape[1] - c)
  frames_ETHWC = frames_ETHWC[:, :c + horizon]
  if lam is not None:  # a latent-action run steers with its LAM's actions
    actions_ET = latent_actions.infer(lam, frames_ETHWC, cfg.data.window)
  # On one device, whatever the training mesh: small, and a program for
  # one device compiles faster than one partitioned over the mesh.
  one_device = jax.devices()[0]
  dyn_graphdef, dyn_params = sampler.model_params(dynamics)
  tok_graphdef, tok_params = sampler.model_params(tokenizer)
  dyn_params, tok_params = jax.device_put((dyn_params, tok_params),
                                          one_device)
  imagined_ETHWC = np.asarray(imagine(
      cfg.dynamics.kind, dyn_graphdef, tok_graphdef, horizon,
      sampler.options_for(cfg), dyn_params, tok_params,
      frames_ETHWC[:, :c],
      np.asarray(actions_ET[:, :c - 1 + horizon], np.int32),
      jax.random.key_data(jax.random.key(cfg.rollout.seed,
                                         impl=sampler.KEY_IMPL))))
  images = media.side_by_side(
      frames_ETHWC, np.concatenate([frames_ETHWC[:, :c], imagined_ETHWC], 1),
      context=c)
  return images[c - 1:]


def at_checkpoint(cfg: Config, graphdef: nnx.GraphDef, state: nnx.State,
                  frozen: Any, logger: Any, step: int, stopping: bool = False
                  ) -> None:
  """Writes the preview of `state` (a train state of `graphdef`) at `step`
  to the run's TensorBoard, where the run has one (see the module doc); not
  when the run is `stopping` (preempted: it saves and goes)."""
  count = cfg.train.preview_episodes
  writer = logger.tensorboard
  if (cfg.train.stage != "dynamics" or count == 0 or writer is None
      or stopping or jax.process_count() > 1 or frozen is None):
    return
  try:
    with jax.transfer_guard("allow"):  # the loop forbids hidden copies
      episodes = pipeline.load_episodes(pipeline.eval_path(cfg.data), "eval",
                                        count)
      if episodes["frames"].shape[1] < cfg.data.window:
        return  # nothing left to imagine after a full window of real frames
      frozen_models = nnx.merge(frozen.graphdef, frozen.state)
      latent = cfg.dynamics.actions == "latent"
      images = truth_beside_imagination(
          cfg, nnx.merge(graphdef, state).model,
          frozen_models.tokenizer if latent else frozen_models,
          frozen_models.lam if latent else None,
          episodes["frames"], episodes["actions"])
    write_images(writer, step, images)
  except Exception as e:  # noqa: BLE001 - a preview never stops training
    log.warning("no TensorBoard preview at step %d (%s: %s); training goes "
                "on. Set train.preview_episodes=0 to turn it off.", step,
                type(e).__name__, e)


def write_images(writer: Any, step: int, images: list[Any]) -> None:
  """All time steps side by side as `preview/strip`, and as an animation,
  `preview/gif` (TensorBoard animates an image summary holding a GIF; it is
  how tensorboardX's own add_video writes one)."""
  from tensorboardX.proto.summary_pb2 import Summary
  strip_HWC = np.concatenate([np.asarray(im) for im in images], 1)
  writer.add_image("preview/strip", strip_HWC, step, dataformats="HWC")
  width, height = images[0].size
  writer.file_writer.add_summary(Summary(value=[Summary.Value(
      tag="preview/gif", image=Summary.Image(
          height=height, width=width, colorspace=3,
          encoded_image_string=media.gif_bytes(images, frame_ms=250)))]),
      step)
  writer.flush()
