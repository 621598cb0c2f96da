"""``batchrun report OUT``: one self-contained HTML page that shows a run (issue 17).

``data`` puts the numbers together (``results`` reads the manifest, ``aggregates`` counts every
row, ``samples`` picks the rows for the tables); ``charts`` draws Vega-Lite charts to static SVG
(no chart script in the page); ``thumbs`` makes the contact sheet's thumbnails; ``page`` writes
the HTML with every value escaped. The chart libraries come with the ``report`` extra and are
imported here only, so ``batchrun run`` never loads them.
"""
