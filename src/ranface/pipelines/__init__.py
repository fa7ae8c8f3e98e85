"""Multi-stage pipelines built from the library's stages: Table 1's comparison of LR
synthesis methods (:mod:`ranface.pipelines.table1`), used by ``ranface table1`` and by
the demo."""
