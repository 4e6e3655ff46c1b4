"""The /ui page in a real browser: headless Chromium driven by Selenium
(Debian's chromium, chromium-driver and python3-selenium). A server on a tiny
generated checkpoint holds a collection of skimage's photographs with their
images; the test uploads a photograph, waits for the PCA picture, clicks a
patch, and checks that the heat map is drawn over the image and over the
neighbours (their pixels change) and that the neighbours list is filled, with
the query photograph itself first. It also checks what the page is served with
(its own files only, a Content-Security-Policy, the item-image route) and saves
a screenshot under the build folder."""
import base64
import io
import os
import shutil
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402
from harness import Checks, request, stop_server  # noqa: E402
from test_index import api, make_checkpoint  # noqa: E402

check = Checks()
BUILD = os.environ.get("FRANCA_BUILD_ROOT", "build")
PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_right.png",
          "hubble_deep_field.jpg"]


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1100"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def wait_for(fn, what, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception:  # noqa: BLE001 (the element may not exist yet)
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def canvas_pixels(driver, css):
    return driver.execute_script(
        "const c = document.querySelector(arguments[0]);"
        "return c.toDataURL('image/png');", css)


def served_files(port):
    st, h, body = request(port, "GET", "/ui")
    check(st == 308 and h.get("Location") == "/ui/", f"/ui redirects to /ui/ ({st})")
    st, h, body = request(port, "GET", "/ui/")
    check(st == 200 and h.get("Content-Type", "").startswith("text/html") and b"/ui/app.js" in body,
          "/ui/ serves the page")
    csp = h.get("Content-Security-Policy", "")
    check("default-src 'self'" in csp, f"the page may load nothing from elsewhere: {csp}")
    page = body.decode()
    check("http://" not in page and "https://" not in page, "no external URL in the page")
    for f, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        st, h, body = request(port, "GET", "/ui/" + f)
        check(st == 200 and h.get("Content-Type", "").startswith(kind) and len(body) > 500,
              f"/ui/{f} served as {kind}")
        check(b"http://" not in body and b"https://" not in body, f"no external URL in {f}")
    st, _, _ = request(port, "GET", "/ui/missing.js")
    check(st == 404, f"an unknown file under /ui is 404 ({st})")


def item_images(port):
    st, h, body = request(port, "GET", "/v1/collections/photos/items/coffee.png/image")
    want = open(os.path.join(ts.PHOTOS, "coffee.png"), "rb").read()
    check(st == 200 and h.get("Content-Type") == "image/png" and body == want,
          "an item's stored image comes back as sent")
    st, _, body = request(port, "GET", "/v1/collections/photos/items/nope/image")
    check(st == 404, f"unknown item image is 404 ({st})")
    st, _, body = request(port, "GET", "/v1/collections/vectors/items/v0/image")
    check(st == 404 and "store_images" in str(body), f"an item without an image is 404 ({st})")


def labelled_collection(port):
    """A patch collection of three photographs whose label masks split each
    into a top half (label 1) and a bottom half (label 2)."""
    from PIL import Image
    st, _ = api(port, "POST", "/v1/collections", {"name": "halves", "level": "patch", "width": 32})
    check(st == 201, f"patch collection created ({st})")
    items = []
    for p in ("astronaut.png", "chelsea.png", "motorcycle_right.png"):
        raw = open(os.path.join(ts.PHOTOS, p), "rb").read()
        w, h = Image.open(io.BytesIO(raw)).size
        mask = Image.new("L", (w, h), 1)
        mask.paste(2, (0, h // 2, w, h))
        buf = io.BytesIO()
        mask.save(buf, "PNG")
        items.append({"id": p, "image": base64.b64encode(raw).decode(),
                      "labels": base64.b64encode(buf.getvalue()).decode()})
    st, body = api(port, "POST", "/v1/collections/halves/items", {"items": items})
    check(st == 200, f"labelled photographs inserted ({st}: {str(body)[:160]})")


def in_browser(port, shot):
    from selenium.webdriver.common.by import By
    d = browser()
    try:
        d.get(f"http://127.0.0.1:{port}/ui/")
        wait_for(lambda: d.find_elements(By.CSS_SELECTOR, "#collection option"), "collections listed")
        # The first collection (the photographs) is selected; ask for 4 neighbours.
        d.execute_script("document.getElementById('k').value = '4'")
        d.find_element(By.ID, "file").send_keys(os.path.join(ts.PHOTOS, "coffee.png"))
        pca = wait_for(lambda: d.execute_script(
            "const i = document.getElementById('pca'); return i && i.complete && i.naturalWidth"),
            "PCA picture", timeout=180)
        check(pca > 0, f"the PCA picture appears ({pca} px wide)")
        wait_for(lambda: d.execute_script("return document.body.dataset.ready"), "page ready")
        n = len(d.find_elements(By.CSS_SELECTOR, "#neighbours li"))
        check(n == 4, f"the neighbours list is filled ({n} of k=4)")
        first = d.find_element(By.CSS_SELECTOR, "#neighbours li div").text
        check(first == "coffee.png", f"the photograph itself is its first neighbour ({first})")
        wait_for(lambda: all(d.execute_script(
            "return Array.from(document.querySelectorAll('#neighbours canvas'))"
            ".map(c => c.width > 1)")), "neighbour thumbnails")
        before = canvas_pixels(d, "#view")
        nb_before = canvas_pixels(d, "#neighbours li:nth-child(2) canvas")
        view = d.find_element(By.ID, "view")
        d.execute_script("arguments[0].scrollIntoView()", view)
        from selenium.webdriver.common.action_chains import ActionChains
        ActionChains(d).move_to_element_with_offset(view, 5, 5).click().perform()
        heat = wait_for(lambda: d.execute_script("return document.getElementById('view').dataset.heat"),
                        "heat map over the image")
        check(heat is not None and canvas_pixels(d, "#view") != before,
              f"clicking a patch draws its heat map over the image (patch {heat})")
        wait_for(lambda: d.execute_script(
            "return document.querySelector('#neighbours li:nth-child(2) canvas').dataset.heat"),
            "heat map over a neighbour")
        check(canvas_pixels(d, "#neighbours li:nth-child(2) canvas") != nb_before,
              "and over each neighbour")
        d.find_element(By.ID, "segment").click()
        legend = wait_for(lambda: d.execute_script(
            "const c = document.getElementById('segmentation');"
            "return c && c.width > 1 && document.querySelector('#segment-out p').textContent"),
            "segmentation picture")
        check(legend.startswith("labels: ") and set(legend[8:].split(", ")) <= {"1", "2"},
              f"segmentation against the labelled collection is drawn ({legend})")
        status = d.find_element(By.ID, "status").text
        check("ready" in status, f"no error on the page: {status!r}")
        d.save_screenshot(shot)
        check(os.path.getsize(shot) > 10000, f"screenshot saved: {shot}")
    finally:
        d.quit()


def main():
    tmp = tempfile.mkdtemp(prefix="franca-ui-")
    proc = None
    try:
        ckpt = make_checkpoint(os.path.join(tmp, "m.safetensors"), seed=7)
        proc, port = ts.start(["--model", f"m={ckpt}", "--data", os.path.join(tmp, "data")])
        st, _ = api(port, "POST", "/v1/collections", {"name": "photos", "store_images": True})
        check(st == 201, f"collection with images created ({st})")
        items = [{"id": p, "image": base64.b64encode(open(os.path.join(ts.PHOTOS, p), "rb").read()).decode()}
                 for p in PHOTOS]
        st, body = api(port, "POST", "/v1/collections/photos/items", {"items": items})
        check(st == 200, f"{len(items)} photographs inserted ({st}: {str(body)[:200]})")
        st, _ = api(port, "POST", "/v1/collections", {"name": "vectors", "width": 8})
        st, _ = api(port, "POST", "/v1/collections/vectors/items",
                    {"items": [{"id": "v0", "vector": [1, 0, 0, 0, 0, 0, 0, 0]}]})
        labelled_collection(port)
        served_files(port)
        item_images(port)
        in_browser(port, os.path.join(BUILD, "ui-screenshot.png"))
        check(proc.poll() is None, "the server is still running")
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        check(False, "the test ran to the end")
    finally:
        if proc:
            stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
