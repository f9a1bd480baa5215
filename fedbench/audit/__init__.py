"""Privacy audits of a federation: gradient inversion (``inversion``, ``labels``, ``attack``),
membership inference (``membership``, ``shadow``), one-run epsilon (``epsilon``) and the
``fedbench-audit`` command with its report (``cli``, ``run``, ``report``)."""
