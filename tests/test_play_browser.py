"""`jaxworld play` in a real browser: headless Chromium (Debian's chromium
and chromium-driver, installed by .ci/run) drives the page of a `jaxworld
play` process serving the tiny demo, as a person would with the keyboard,
then Ctrl-C stops the server.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from jaxworld.play import browser

pytestmark = pytest.mark.skipif(browser.find() is None,
                                reason=browser.missing_reason())

READY_TIMEOUT_S = 240  # the server loads and compiles before it listens


class Served:
  """A `jaxworld play` process; its output goes to files (a pipe nobody
  reads could fill up and stall it)."""

  def __init__(self, source, tmp):
    self.out, self.err = tmp / "stdout.txt", tmp / "stderr.txt"
    with self.out.open("w") as out, self.err.open("w") as err:
      self.proc = subprocess.Popen(
          [sys.executable, "-m", "jaxworld.cli", "play", str(source),
           "--port", "0", "--episodes", "4", "--fps", "20"],
          stdout=out, stderr=err, env={**os.environ, "JAX_PLATFORMS": "cpu"})

  def wait_ready(self) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and self.proc.poll() is None:
      for line in self.out.read_text().splitlines():
        if "ready at http://127.0.0.1:" in line:
          return line.split("ready at ")[1].split()[0]
      time.sleep(0.2)
    raise AssertionError("jaxworld play did not get ready:\n" +
                         self.out.read_text() + self.err.read_text()[-3000:])


@pytest.fixture(scope="module")
def served(tiny_demo, tmp_path_factory):
  """`jaxworld play` on the tiny demo directory, on a free port."""
  served = Served(tiny_demo, tmp_path_factory.mktemp("play"))
  try:
    served.url = served.wait_ready()
    yield served
  finally:
    if served.proc.poll() is None:
      served.proc.kill()
      served.proc.wait()


@pytest.fixture(scope="module")
def page(served):
  driver = browser.start()
  driver.get(served.url)
  yield driver
  driver.quit()


def js(driver, expression):
  return driver.execute_script(f"return {expression};")


def wait_for(driver, expression, timeout=60):
  from selenium.webdriver.support.ui import WebDriverWait
  return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
      lambda d: js(d, expression))


def canvas(driver):
  """The imagined frame as drawn, once every frame that arrived is."""
  wait_for(driver, "Number(document.body.dataset.drawn) === "
           "jaxworldPlay.stats.frames")
  return js(driver, "document.getElementById('imagined').toDataURL()")


def press(driver, key, hold_s=0.0):
  from selenium.webdriver.common.action_chains import ActionChains
  ActionChains(driver).key_down(key).pause(hold_s).key_up(key).perform()


def test_drive_the_world_with_the_keyboard(page):
  from selenium.webdriver.common.keys import Keys
  wait_for(page, "document.body.dataset.state === 'ready'")
  assert js(page, "document.querySelectorAll('#thumbs img').length") == 4
  # It runs by itself: frames arrive (that they change is checked paused
  # below, where it does not depend on timing).
  for n in (1, 4, 8):
    wait_for(page, f"jaxworldPlay.stats.imagined >= {n}")
  assert float(js(page, "document.getElementById('fps').textContent")) > 0
  # A held key is the action while it is down.
  from selenium.webdriver.common.action_chains import ActionChains
  ActionChains(page).key_down(Keys.ARROW_UP).perform()
  wait_for(page, "jaxworldPlay.stats.lastAction === 'up'")
  ActionChains(page).key_up(Keys.ARROW_UP).perform()
  wait_for(page, "jaxworldPlay.stats.lastAction === 'noop'")
  assert js(page, "jaxworldPlay.stats.keyMs.length") >= 1

  # Paused, each key press is one frame; different actions, different frames.
  press(page, "p")
  wait_for(page, "jaxworldPlay.state.running === false")

  def after(key):
    press(page, "r")
    wait_for(page, "jaxworldPlay.stats.lastStep === 0")
    start = canvas(page)  # the episode's last real frame
    for step in (1, 2, 3):
      press(page, key)
      wait_for(page, f"jaxworldPlay.stats.lastStep === {step}")
    return start, canvas(page)

  start, went_up = after(Keys.ARROW_UP)
  assert went_up != start  # imagined frames replace the real one
  assert after(Keys.ARROW_DOWN)[1] != went_up
  assert after(Keys.ARROW_UP)[1] == went_up  # same actions, same world


def test_a_bad_message_is_shown_and_the_session_goes_on(page):
  from selenium.webdriver.common.keys import Keys
  wait_for(page, "document.body.dataset.state === 'ready'")
  page.execute_script("jaxworldPlay.send('{not json');")
  wait_for(page, "!document.getElementById('error').hidden")
  assert "not valid JSON" in js(page,
                                "document.getElementById('error').textContent")
  page.execute_script("jaxworldPlay.send(JSON.stringify("
                      "{type: 'start', episode: 99}));")
  wait_for(page, "jaxworldPlay.stats.errors.some(e => e.includes("
           "'Episode 99 does not exist'))")
  if js(page, "jaxworldPlay.state.running"):
    press(page, "p")
    wait_for(page, "jaxworldPlay.state.running === false")
  time.sleep(0.3)  # a frame in flight as it paused lands first
  step = js(page, "jaxworldPlay.stats.lastStep")
  press(page, Keys.ARROW_LEFT)
  wait_for(page, f"jaxworldPlay.stats.lastStep === {step + 1}")
  assert js(page, "jaxworldPlay.stats.lastAction") == "left"
  assert js(page, "document.body.dataset.state") == "ready"


def test_ctrl_c_stops_the_server_cleanly(page, served):
  served.proc.send_signal(signal.SIGINT)
  assert served.proc.wait(timeout=30) == 0, served.err.read_text()[-3000:]
  assert "jaxworld play: stopped" in served.out.read_text()
  assert "Traceback" not in served.err.read_text()
  # The page is told, instead of freezing on the last frame.
  wait_for(page, "document.body.dataset.state === 'closed'", timeout=10)
