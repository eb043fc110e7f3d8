"""Reads `engine bench -o json` output: one or more JSON values (an object or an array of them)
written one after another, as `--concurrency 8,32,64` prints them. Shared by the bench scripts."""
import json


def engine_rows(path):
    """The rows of the file at `path` by their `concurrency` (the last row of a level wins)."""
    text, decoder, position, rows = open(path).read(), json.JSONDecoder(), 0, {}
    while position < len(text):
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        value, position = decoder.raw_decode(text, position)
        for row in value if isinstance(value, list) else [value]:
            rows[row["concurrency"]] = row
    return rows
