"""Times the embedded world: `python bench/world_speed.py [episodes frames]`.

Prints episodes/s and frames/s of `world.generate` (simulation and
rendering) and the motion statistics of what it made. The first call in a
process also pays for the OS handing over fresh memory for the frames
(~0.8 GB at the defaults), so the best of a few repeats is reported too.
"""

import sys
import time

from jaxworld.config import WorldConfig
from jaxworld.data import world


def main(num_episodes: int = 1000, num_frames: int = 64, repeats: int = 3
         ) -> None:
  cfg = WorldConfig()
  times = []
  for seed in range(repeats):
    start = time.perf_counter()
    out = world.generate(cfg, num_episodes, num_frames, seed=seed)
    times.append(time.perf_counter() - start)
    del out["frames"]  # Free it before the next repeat allocates its own.
  frames = num_episodes * num_frames
  print(f"world.generate: {num_episodes} episodes x {num_frames} frames at "
        f"{cfg.image_size}x{cfg.image_size}, K={cfg.num_objects} balls")
  for label, secs in (("first", times[0]), ("best", min(times))):
    print(f"  {label:5s} {secs:6.2f} s  {num_episodes / secs:8.0f} episodes/s"
          f"  {frames / secs:9.0f} frames/s")
  motion = world.describe_motion(out["states"])  # Of the last repeat.
  print(f"  mean ball speed  {motion['mean_ball_speed']:.2f} px/frame")
  print(f"  mean agent speed {motion['mean_agent_speed']:.2f} px/frame")


if __name__ == "__main__":
  main(*(int(a) for a in sys.argv[1:3]))
