"""Methods that compare K sampled answers with the greedy one (the samples are generated once).

One shared statistic, the answer set's similarity matrix (``similarity``), and pure functions of it:
``clusters`` (number of semantic sets, discrete semantic entropy) and ``graph`` (EigV, degree,
eccentricity, kernel language entropy); ``methods`` and ``consistency`` register the method classes.
"""
