"""Streamlit leaderboard of a results directory (read-only).

streamlit run dashboard/app.py -- --out DIR      (or HARNESS_OUT=DIR; `harness dashboard --out DIR`)
... -- --out A=DIR1 --out B=DIR2                  experiments side by side (HARNESS_OUT=DIR1,DIR2)
"""

from __future__ import annotations

import os
import sys

import streamlit as st

from dashboard.data import experiments_from, fingerprint
from dashboard.views import PAGES, cached_results
from harness.errors import HarnessError

st.set_page_config(page_title="Alignment leaderboard", layout="wide")

try:
    experiments = experiments_from(sys.argv[1:], os.environ)
    results = cached_results(
        tuple((e.name, str(e.results.root)) for e in experiments),
        sum((fingerprint(e.results.root) for e in experiments), ()),
    )
except HarnessError as exc:
    st.error(str(exc))
    st.stop()

st.sidebar.title("Alignment harness")
page = st.sidebar.radio("Page", list(PAGES), key="page")
shown = "  \n".join(f"{name}: `{root}`" for name, root in results.experiments) or f"`{results.results_dir}`"
st.sidebar.caption(
    f"Results: {shown}  \n{len(results.runs)} run(s), {len(results.images)} image(s). Rerun (R) to pick up new results."
)
if results.experiments:
    st.sidebar.caption(
        "Experiments side by side: methods are named experiment/method, each compared with its own experiment's base."
    )
PAGES[page](results)
