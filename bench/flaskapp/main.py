"""A small Flask app: a few routes and a template, as a typical App Engine Flask app starts out."""

from flask import Flask, jsonify, render_template_string

app = Flask(__name__)

PAGE = "<!doctype html><title>{{ title }}</title><h1>{{ title }}</h1><ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>"


@app.route("/")
def index() -> str:
    return render_template_string(PAGE, title="Hello from Flask", items=["one", "two", "three"])


@app.route("/api/items")
def items():  # type: ignore[no-untyped-def]
    return jsonify(items=["one", "two", "three"])
