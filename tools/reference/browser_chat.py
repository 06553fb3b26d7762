"""The web chat of `yuanli serve` in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium from PyPI): the page names the model, a typed message gets
an answer that arrives in pieces (streamed), and the stop button ends a long answer early.

Run by crates/serve/tests/browser.rs against a server on SmolLM2-135M-Instruct.
Usage: python tools/reference/browser_chat.py URL [--screenshot PNG]
"""
import argparse
import shutil
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what[:120]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--screenshot")
    a = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    check(chromium is not None and driver_bin is not None, "chromium and chromedriver are installed")
    opts = Options()
    opts.binary_location = chromium
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,720"]:
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    try:
        d.get(a.url)
        wait = WebDriverWait(d, 60, poll_frequency=0.02)
        wait.until(lambda d: "context" in d.find_element(By.ID, "model").text)
        check(True, f"the page names the model: {d.find_element(By.ID, 'model').text}")

        def field(id_, value):
            el = d.find_element(By.ID, id_)
            el.clear()
            el.send_keys(value)

        field("system", "You are a helpful assistant. Answer in one short sentence.")
        field("temperature", "0")
        field("max_tokens", "40")
        d.find_element(By.ID, "input").send_keys("What is the capital of France?")
        d.find_element(By.ID, "send").click()
        # Watch the answer grow: streamed text shows several lengths before it is done.
        lengths = set()
        deadline = time.time() + 120
        while time.time() < deadline:
            bubbles = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")
            if bubbles:
                lengths.add(len(bubbles[-1].text))
                if bubbles[-1].get_attribute("data-done") == "true":
                    break
            time.sleep(0.01)
        answer = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text
        check("Paris" in answer, f"the answer: {answer!r}")
        check(len(lengths) >= 3, f"the answer arrived in pieces (lengths seen: {sorted(lengths)[:8]})")
        if a.screenshot:
            d.save_screenshot(a.screenshot)

        # The stop button ends a long answer.
        field("max_tokens", "1000")
        d.find_element(By.ID, "input").send_keys("Write a very long story about a dragon who loves books.")
        d.find_element(By.ID, "send").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2
                   and len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text) > 20)
        d.find_element(By.ID, "stop").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].get_attribute("data-done") == "true")
        meta = d.find_elements(By.CSS_SELECTOR, ".msg.assistant .meta")[-1].text
        check("stopped" in meta, f"stopped: {meta!r}")
        check(d.find_element(By.ID, "send").is_displayed(), "the send button is back")
    finally:
        d.quit()
    print("all checks passed")


if __name__ == "__main__":
    main()
