"""webapp: a tiny WSGI app that Stageflow's example pipeline deploys."""
