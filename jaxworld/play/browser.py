"""A headless Chromium driven by Selenium, for the browser test and the
page's screenshot: Debian's `chromium` and `chromium-driver` packages, with
the driver's path given, so Selenium downloads nothing.

    apt-get install chromium chromium-driver   # .ci/run does this
    pip install selenium                       # in jaxworld's [test] extras
"""

from __future__ import annotations

import os
import shutil
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def find() -> tuple[str, str] | None:
  """(browser, driver) executables, or None where either is missing."""
  browser = next(filter(None, map(shutil.which, BROWSERS)), None)
  driver = next(filter(None, map(shutil.which, DRIVERS)), None)
  return (browser, driver) if browser and driver else None


def missing_reason() -> str:
  return ("no Chromium and chromedriver on PATH: install them with "
          "`apt-get install chromium chromium-driver` (.ci/run does)")


def start(width: int = 1280, height: int = 800) -> Any:
  """A headless Chromium WebDriver at the given window size."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  found = find()
  if found is None:
    raise RuntimeError(missing_reason())
  browser, driver = found
  options = webdriver.ChromeOptions()
  options.binary_location = browser
  for flag in ("--headless=new", "--disable-gpu", "--disable-extensions",
               "--no-first-run", "--disable-dev-shm-usage",
               f"--window-size={width},{height}"):
    options.add_argument(flag)
  if os.geteuid() == 0:  # Chromium refuses to sandbox as root (CI)
    options.add_argument("--no-sandbox")
  return webdriver.Chrome(service=Service(executable_path=driver),
                          options=options)
