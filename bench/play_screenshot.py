"""A screenshot of the `jaxworld play` page driving a model (docs/img/play.png).

    python bench/play_screenshot.py runs/demo --out docs/img/play.png

Serves RUN_OR_BUNDLE, opens the page in headless Chromium (Debian's
chromium and chromium-driver), starts an episode and drives it with the
episode's own actions, so the side panel shows the real frames for the same
actions, pauses after `--steps` imagined frames and saves the window.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("source", help="a dynamics run, demo directory or bundle")
  p.add_argument("--out", default="docs/img/play.png")
  p.add_argument("--episode", type=int, default=1)
  p.add_argument("--steps", type=int, default=12)
  args = p.parse_args()

  from selenium.webdriver.support.ui import WebDriverWait

  from jaxworld.play import browser, server

  world, _ = server.load_world(args.source, 16)
  driver = browser.start(1280, 720)
  try:
    with server.Background(world, server.Limits(max_fps=10)) as url:
      driver.get(url)
      wait = WebDriverWait(driver, 120, poll_frequency=0.05)
      js = lambda expression: driver.execute_script(f"return {expression};")
      wait.until(lambda d: js("document.body.dataset.state === 'ready'"))
      js("document.querySelectorAll('#thumbs img')"
         f"[{args.episode}].click()")
      js("jaxworldPlay.send(JSON.stringify({type: 'true_actions', "
         "on: true}))")
      wait.until(lambda d: js(f"jaxworldPlay.stats.lastStep >= "
                              f"{args.steps}"))
      js("jaxworldPlay.send(JSON.stringify({type: 'pause'}))")
      wait.until(lambda d: js("jaxworldPlay.state.running === false"))
      time.sleep(0.5)  # the last frames drawn
      driver.save_screenshot(args.out)
  finally:
    driver.quit()
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
