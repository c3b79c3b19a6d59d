"""A local page to try a finished run: ``ftpeft app OUTPUT_DIR``.

``scoring.py`` scores one text (or one image) with the predictor ``ftpeft predict`` loads for the run, so the page
shows the same probabilities as the CSV; ``page.py`` is the Gradio page around it (imported only by the command).
"""
