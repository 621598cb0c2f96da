"""``batchrun report OUT``: one self-contained HTML page that shows a run (issue 17).

``data`` aggregates the manifest (every row) and samples rows for the tables; ``charts`` draws
Vega-Lite charts to static SVG (no chart script in the page); ``thumbs`` makes the contact sheet's
thumbnails; ``page`` writes the HTML with every value escaped. The chart libraries come with the
``report`` extra and are imported here only, so ``batchrun run`` never loads them.
"""
