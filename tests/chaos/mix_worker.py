"""``celery -A chaos.mix_worker worker|beat``: the soak's app, set by ``MIX_*``, with the
crash points armed (see ``chaos.mix``)."""

from chaos.mix import MixConfig, install_crash_points, make_mix_app

config = MixConfig.from_env()
install_crash_points(config)
app = make_mix_app(config).app
