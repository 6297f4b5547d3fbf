"""The seed backend: "Hello from Backend!" with its version in x-backend-version."""
import os

from flask import Flask, make_response

app = Flask(__name__)
VERSION = os.environ.get("VERSION", "v1")
failing = False


@app.get("/")
def hello():
    if failing:
        return make_response("failing on purpose", 500)
    resp = make_response("Hello from Backend!")
    resp.headers["x-backend-version"] = VERSION
    return resp


@app.post("/admin/fail")
def fail():
    global failing
    failing = True
    return "failing\n"


@app.post("/admin/heal")
def heal():
    global failing
    failing = False
    return "healed\n"


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=8080)
