"""Give schemathesis a tenant worth fuzzing, and write its config file.

Random strings never name a feature or a live hold, so without this every allowance,
commit and usage report stops at 400 unknown_feature or 404 and the money paths are never
reached. This makes features, budgets of each enforcement and live holds through the API,
then binds the fields that name them to those values (schemathesis "dictionaries"), mixed
with generated values.

    python .ci/fuzz_setup.py CONFIG_PATH      (BOOT_URL, API_KEY in the environment)
"""

from __future__ import annotations

import json
import os
import sys

import httpx

FEATURES = [
    {"key": "fuzz-bot", "name": "Fuzz bot", "default_model": "claude-sonnet-4-5",
     "fallback_models": ["claude-haiku-4-5"], "max_tokens_cap": 4096},
    {"key": "fuzz-batch", "name": "Fuzz batch", "default_model": "claude-haiku-4-5", "interactive": False},
]
# Only this one is named in paths, so PATCH and DELETE (deactivating, renaming) never take
# away the features the allowances use.
TARGET_FEATURE = {"key": "fuzz-target", "name": "Fuzz target", "default_model": "claude-haiku-4-5"}
BUDGETS = [
    {"name": "Fuzz daily", "scope": "tenant", "period": "day", "limit_usd": "5.00", "enforcement": "block"},
    {"name": "Fuzz bot weekly", "scope": "feature", "feature": "fuzz-bot", "period": "week",
     "limit_usd": "1.00", "enforcement": "downgrade"},
    {"name": "Fuzz opus", "scope": "tenant", "model_families": ["opus"], "period": "month",
     "limit_usd": "0.50", "enforcement": "block"},
    {"name": "Fuzz runs", "scope": "run", "period": "total", "limit_tokens": 200000, "enforcement": "alert"},
]
MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-sonnet-4-5-20250929"]
HOLDS = 40


def main(config_path: str) -> None:
    headers = {"Authorization": f"Bearer {os.environ['API_KEY']}", "X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=os.environ["BOOT_URL"], headers=headers, timeout=10) as client:

        def post(path: str, body: dict) -> dict:
            response = client.post(path, json=body)
            if response.status_code >= 300:
                sys.exit(f"fuzz setup: POST {path} answered {response.status_code}: {response.text[:300]}")
            return response.json()

        for feature in [*FEATURES, TARGET_FEATURE]:
            post("/api/v1/features", feature)
        budget_ids = [post("/api/v1/budgets", budget)["id"] for budget in BUDGETS]
        channel = post("/api/v1/alert-channels",
                       {"name": "Fuzz email", "kind": "email", "email_addresses": ["fuzz@example.com"]})
        holds = []
        for index in range(HOLDS):
            answer = post("/api/v1/allowances", {
                "feature": FEATURES[index % 2]["key"], "model": MODELS[index % 2],
                "input_tokens": 100 + index, "max_tokens": 64, "run_id": f"run-{index % 3}",
                "ttl_seconds": 3600,
            })
            if answer.get("id"):
                holds.append(answer["id"])
    if not holds:
        sys.exit("fuzz setup: no allowance was granted")

    def dictionary(name: str, values: list[str]) -> str:
        return f"[dictionaries.{name}]\nvalues = {json.dumps(values)}\n"

    bindings = {
        "body.feature": ("features", 0.7),
        "query.feature": ("features", 0.7),
        "path.key": ("target", 0.5),
        "body.model": ("models", 0.7),
        "path.hold_id": ("holds", 0.8),
        "path.budget_id": ("budgets", 0.7),
        "query.budget": ("budgets", 0.5),
        "path.channel_id": ("channels", 0.7),
    }
    lines = [
        "# Written by .ci/fuzz_setup.py for this run only.",
        dictionary("features", [f["key"] for f in FEATURES]),
        dictionary("target", [TARGET_FEATURE["key"]]),
        dictionary("models", MODELS),
        dictionary("holds", holds),
        dictionary("budgets", budget_ids),
        dictionary("channels", [channel["id"]]),
        "[parameters]",
        *(f'"{key}" = {{ dictionary = "{name}", probability = {p} }}' for key, (name, p) in bindings.items()),
    ]
    with open(config_path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"fuzz setup: {len(FEATURES)} features, {len(budget_ids)} budgets, {len(holds)} live holds")


if __name__ == "__main__":
    main(sys.argv[1])
