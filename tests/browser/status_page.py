"""Drives the coordinator's status page in a real headless Chromium.

Usage: status_page.py URL GROUP SCREENSHOT

Loads the page, marks the window (a reload would lose the mark), and says
on stdout `primary NODE` once the page shows GROUP's primary. Then reads
lines `expect NODE` on stdin and waits until the page shows NODE as the
primary without being reloaded, answering `primary NODE`; at `shot` it
saves a screenshot of the page to SCREENSHOT and answers `saved`.
Every wait has a deadline; a failure is one line `error: ...`, exit 1.
"""

import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

DEADLINE_S = 60


def say(line):
    print(line, flush=True)


def primary_shown(driver, group):
    # Read in one step in the page: the page redraws its cards, and an
    # element found in one call may be gone by the next.
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
        f'article[data-group="{group}"] [data-field="primary"]',
    )


def wait_for(what, check):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    say(f"error: timed out waiting for {what}")
    sys.exit(1)


def main():
    url, group, screenshot = sys.argv[1:4]
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_page_load_timeout(DEADLINE_S)
        driver.get(url)
        driver.execute_script("window.__notReloaded = 'still the first load';")
        first = wait_for("a primary on the page", lambda: (p := primary_shown(driver, group)) and p != "none" and p)
        say(f"primary {first}")
        for line in sys.stdin:
            command = line.split()
            if not command:
                continue
            if command[0] == "expect":
                node = command[1]
                wait_for(f"{node} as primary", lambda: primary_shown(driver, group) == node)
                marker = driver.execute_script("return window.__notReloaded || null;")
                if marker != "still the first load":
                    say("error: the page was reloaded")
                    sys.exit(1)
                say(f"primary {node}")
            elif command[0] == "shot":
                driver.save_screenshot(screenshot)
                say("saved")
            elif command[0] == "text":
                text = driver.execute_script("return document.body.innerText;") or ""
                say("text " + text.replace("\n", " | "))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
