"""Diffusion core: schedules vs closed forms, targets, DDIM/DPM-Solver++ steps and samplers, CFG, dropout.

The last tests compare with diffusers' DDIMScheduler / DPMSolverMultistepScheduler on the same model
outputs; they are skipped when torch + diffusers are not installed (the 'conformance' extra).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.models.cxr_irgen import diffusion as D


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def test_scaled_linear_schedule_matches_closed_form():
    s = D.make_schedule()
    T = 1000
    i = np.arange(T)
    betas = (math.sqrt(0.00085) + i / (T - 1) * (math.sqrt(0.012) - math.sqrt(0.00085))) ** 2
    assert s.num_train_timesteps == T
    np.testing.assert_allclose(s.betas, betas, rtol=1e-12)
    assert s.alphas_cumprod[0] == pytest.approx(1 - 0.00085, abs=1e-12)
    assert s.alphas_cumprod[999] == pytest.approx(math.exp(np.sum(np.log1p(-betas))), rel=1e-10)
    # SD's well-known terminal value: sqrt(alpha_bar_999) ~ 0.0683 (not zero terminal SNR).
    assert math.sqrt(s.alphas_cumprod[999]) == pytest.approx(0.06826, abs=2e-4)
    assert np.all(np.diff(s.alphas_cumprod) < 0)


def test_linear_and_cosine_schedules():
    lin = D.make_schedule("linear")
    assert lin.betas[0] == pytest.approx(1e-4) and lin.betas[-1] == pytest.approx(0.02)
    assert lin.alphas_cumprod[1] == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999)), rel=1e-12)
    cos = D.make_schedule("cosine")
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 100, 500, 900):  # below the 0.999 beta clip, alpha_bar telescopes to f((t+1)/T) / f(0)
        assert cos.alphas_cumprod[t] == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)
    assert cos.betas.max() <= 0.999
    with pytest.raises(ValueError, match="kind"):
        D.make_schedule("quadratic")
    with pytest.raises(ValueError, match="cosine"):
        D.make_schedule("cosine", beta_start=0.1)


# ------------------------------------------------------------------------------------------------
# Training targets and loss
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_q_sample_and_targets_invert(prediction):
    s = D.make_schedule()
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (5, 4, 4, 3))
    noise = jax.random.normal(k2, x0.shape)
    t = jnp.array([0, 1, 250, 700, 999])
    x_t = D.q_sample(s, x0, t, noise)
    a = np.sqrt(s.alphas_cumprod[np.asarray(t)])[:, None, None, None]
    np.testing.assert_allclose(x_t, a * x0 + np.sqrt(1 - a ** 2) * noise, rtol=1e-5, atol=1e-6)
    target = D.training_target(s, x0, t, noise, prediction)
    if prediction == "v_prediction":
        np.testing.assert_allclose(target, a * noise - np.sqrt(1 - a ** 2) * x0, rtol=1e-5, atol=1e-6)
    x0_hat, eps_hat = D.predict_x0_eps(s, x_t, t, target, prediction)
    # at t=0 the epsilon route divides the noise by sqrt(alpha_bar), at t=999 x0 by 0.068: loose atol
    np.testing.assert_allclose(x0_hat, x0, atol=5e-4)
    np.testing.assert_allclose(eps_hat, noise, atol=5e-4 if prediction == "v_prediction" else 1e-6)


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_training_loss_is_zero_for_the_exact_denoiser(prediction):
    """The oracle of a one-point data set (x0 known) must score ~0: q_sample, t and target agree."""
    s = D.make_schedule()
    x0 = jax.random.normal(jax.random.key(1), (64, 4, 4, 2))

    def oracle(x_t, t, cond):
        alpha, sigma = D._alpha_sigma(s, t, x_t.ndim)
        eps = (x_t - alpha * cond) / sigma
        return eps if prediction == "epsilon" else alpha * eps - sigma * cond

    loss, aux = D.training_loss(oracle, s, x0, x0, jax.random.key(2), prediction, cond_drop_prob=0.0)
    assert float(loss) < 1e-6
    assert aux["per_example"].shape == (64,) and not bool(aux["dropped"].any())
    # a denoiser predicting the other parameterisation is wrong: the loss notices
    other = "v_prediction" if prediction == "epsilon" else "epsilon"
    assert float(D.training_loss(oracle, s, x0, x0, jax.random.key(2), other, cond_drop_prob=0.0)[0]) > 1e-2


def test_drop_condition_replaces_exactly_the_masked_examples():
    b, S, d = 6, 3, 5
    cond = {"context": jnp.arange(b * S * d, dtype=jnp.float32).reshape(b, S, d) + 1.0,
            "mask": jnp.ones((b, S), jnp.int32)}
    null = {"context": -jnp.ones((S, d)), "mask": jnp.array([1, 0, 0], jnp.int32)}  # one example's shape
    drop = jnp.array([True, False, False, True, False, True])
    out = D.drop_condition(cond, null, drop)
    for i in range(b):
        if drop[i]:
            np.testing.assert_array_equal(out["context"][i], -np.ones((S, d)))
            np.testing.assert_array_equal(out["mask"][i], [1, 0, 0])
        else:
            np.testing.assert_array_equal(out["context"][i], cond["context"][i])
            np.testing.assert_array_equal(out["mask"][i], cond["mask"][i])
    assert out["mask"].dtype == jnp.int32
    with pytest.raises(ValueError, match="null_cond"):
        D.drop_condition(cond, {"context": jnp.zeros((2, d)), "mask": null["mask"]}, drop)


def test_training_loss_conditioning_dropout_rate_and_routing():
    """Dropped examples (and only those) reach the denoiser with the null condition, at rate ~ p."""
    s = D.make_schedule()
    b, p = 4096, 0.1
    x0 = jnp.zeros((b, 2, 2, 1))
    cond = jnp.full((b, 3), 1000.0)  # a pooled vector (U-ViT style)
    denoise = lambda x, t, c: jnp.broadcast_to(c[:, :1, None, None], x.shape)  # echo the condition
    fn = jax.jit(lambda rng: D.training_loss(denoise, s, x0, cond, rng, cond_drop_prob=p, null_cond=jnp.zeros(3)))
    rates = []
    for seed in range(3):
        _, aux = fn(jax.random.key(seed))
        dropped = np.asarray(aux["dropped"])
        # kept examples regress 1000 onto unit noise (~1e6), dropped ones 0 (~1)
        np.testing.assert_array_equal(np.asarray(aux["per_example"]) < 100.0, dropped)
        rates.append(dropped.mean())
    assert abs(np.mean(rates) - p) < 0.01, rates
    with pytest.raises(ValueError, match="null_cond"):
        D.training_loss(denoise, s, x0, cond, jax.random.key(0), cond_drop_prob=0.1)


# ------------------------------------------------------------------------------------------------
# Steps and samplers
# ------------------------------------------------------------------------------------------------


def test_sampling_timesteps():
    lead = D.sampling_timesteps(1000, 50)
    np.testing.assert_array_equal(lead, np.arange(981, 0, -20))  # SD: 981, 961, ..., 1
    np.testing.assert_array_equal(D.sampling_timesteps(1000, 50, "trailing"), np.arange(999, 0, -20))
    lin = D.sampling_timesteps(1000, 4, "linspace")
    np.testing.assert_array_equal(lin, [999, 666, 333, 0])
    with pytest.raises(ValueError, match="num_steps"):
        D.sampling_timesteps(1000, 0)


def test_ddim_step_closed_form():
    """eta 0: the deterministic DDIM update; eta 1: mean = the DDPM posterior mean, std = its std."""
    ab_t, ab_prev = 0.3, 0.7
    x = np.array([0.5, -1.2, 2.0], np.float32)
    eps = np.array([0.3, 0.1, -0.7], np.float32)
    x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    expected = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    np.testing.assert_allclose(D.ddim_step(jnp.asarray(x), jnp.asarray(eps), ab_t, ab_prev), expected, rtol=1e-6)

    alpha = ab_t / ab_prev  # single-step alpha between the two
    post_mean = (math.sqrt(ab_prev) * (1 - alpha) / (1 - ab_t) * x0
                 + math.sqrt(alpha) * (1 - ab_prev) / (1 - ab_t) * x)
    post_std = math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - alpha))
    z = np.array([1.0, -2.0, 0.5], np.float32)
    got = D.ddim_step(jnp.asarray(x), jnp.asarray(eps), ab_t, ab_prev, eta=1.0, noise=jnp.asarray(z))
    np.testing.assert_allclose(got, post_mean + post_std * z, rtol=1e-5)
    # v-prediction of the same state gives the same step
    v = math.sqrt(ab_t) * eps - math.sqrt(1 - ab_t) * x0
    np.testing.assert_allclose(D.ddim_step(jnp.asarray(x), jnp.asarray(v), ab_t, ab_prev, "v_prediction"),
                               expected, rtol=1e-5)


def _point_oracle(schedule, x0_star, prediction):
    """The exact denoiser of a one-point data distribution at x0_star."""
    def fn(x, t, cond):
        alpha, sigma = D._alpha_sigma(schedule, t, x.ndim)
        eps = (x - alpha * x0_star) / sigma
        return eps if prediction == "epsilon" else alpha * eps - sigma * x0_star
    return fn


@pytest.mark.parametrize("sampler,prediction,spacing,steps", [
    ("ddim", "epsilon", "leading", 50), ("ddim", "v_prediction", "trailing", 7),
    ("dpm_solver_2m", "epsilon", "leading", 20), ("dpm_solver_2m", "v_prediction", "trailing", 5)])
def test_samplers_recover_a_single_point_with_the_oracle(sampler, prediction, spacing, steps):
    s = D.make_schedule()
    x0_star = jax.random.normal(jax.random.key(3), (2, 4, 4, 1))
    cfg = D.SamplerConfig(sampler=sampler, num_steps=steps, guidance_scale=None, prediction=prediction,
                          spacing=spacing, set_alpha_to_one=True)
    run = jax.jit(lambda xT: D.sample(_point_oracle(s, x0_star, prediction), s, xT, None, config=cfg))
    out = run(jax.random.normal(jax.random.key(4), x0_star.shape))
    np.testing.assert_allclose(out, x0_star, atol=2e-4)


def test_ddim_without_alpha_one_ends_at_alpha_bar_0():
    """SD's set_alpha_to_one=False: the last DDIM step lands at alpha_bar[0], not at x0."""
    s = D.make_schedule()
    x0_star = jnp.ones((1, 2, 2, 1))
    cfg = D.SamplerConfig(num_steps=10, guidance_scale=None)
    xT = jnp.full(x0_star.shape, 2.0)
    out = D.sample(_point_oracle(s, x0_star, "epsilon"), s, xT, None, config=cfg)
    # the deterministic trajectory keeps eps fixed: eps = (xT - a_T x0) / s_T
    a_T = math.sqrt(s.alphas_cumprod[901])
    eps = (2.0 - a_T) / math.sqrt(1 - a_T ** 2)
    ab0 = s.alphas_cumprod[0]
    np.testing.assert_allclose(out, math.sqrt(ab0) + math.sqrt(1 - ab0) * eps, rtol=1e-5)


def test_dpm_solver_2m_is_second_order_on_gaussian_data():
    """For x0 ~ N(mu, sd^2) the exact denoiser and the probability-flow ODE solution are closed forms.

    On a schedule whose sampled steps are uniform in log-SNR, halving the step size must cut
    DPM-Solver++(2M)'s error ~4x (second order) and DDIM's ~2x (first order). Both end with the
    same denoising step (x0 prediction at the last timestep), so the reference is the ODE solution
    up to that timestep followed by the exact posterior mean.
    """
    mu, sd, T = 1.5, 0.4, 145  # "linspace" with 19 or 37 steps: every 8th or 4th t, from 144 to 0
    lam = np.linspace(-2.7, 3.2, T)[::-1]  # log(alpha / sigma), decreasing in t
    ab = 1.0 / (1.0 + np.exp(-2.0 * lam))
    sched = D.Schedule("custom", np.concatenate([[1 - ab[0]], 1 - ab[1:] / ab[:-1]]), ab)

    def eps_fn(x, t, cond):
        alpha, sigma = D._alpha_sigma(sched, t, x.ndim)
        return sigma * (x - alpha * mu) / (alpha ** 2 * sd ** 2 + sigma ** 2)  # E[eps | x_t]

    xT = jnp.linspace(-2.5, 2.5, 11).reshape(11, 1, 1, 1)
    errs = {}
    for n in (19, 37):
        ts = D.sampling_timesteps(T, n, "linspace")
        a0, al = np.sqrt(ab[ts[0]]), np.sqrt(ab[ts[-1]])
        z = (np.asarray(xT, np.float64) - a0 * mu) / np.sqrt(a0 ** 2 * sd ** 2 + 1 - a0 ** 2)
        x_last = al * mu + np.sqrt(al ** 2 * sd ** 2 + 1 - al ** 2) * z  # the flow keeps z
        exact = mu + al * sd ** 2 * (x_last - al * mu) / (al ** 2 * sd ** 2 + 1 - al ** 2)
        for name in D.SAMPLERS:
            cfg = D.SamplerConfig(sampler=name, num_steps=n, guidance_scale=None, spacing="linspace",
                                  set_alpha_to_one=True)
            errs[name, n] = float(np.max(np.abs(D.sample(eps_fn, sched, xT, None, config=cfg) - exact)))
    assert errs["dpm_solver_2m", 37] < 0.33 * errs["dpm_solver_2m", 19], errs
    assert errs["ddim", 37] > 0.42 * errs["ddim", 19], errs
    assert errs["dpm_solver_2m", 19] < 0.15 * errs["ddim", 19], errs


def test_dpm_solver_2m_step_first_order_is_ddim():
    x, x0 = jnp.array([0.7, -0.2]), jnp.array([0.1, 0.4])
    ab_s, ab_t = 0.2, 0.6
    eps = (x - math.sqrt(ab_s) * x0) / math.sqrt(1 - ab_s)
    ddim = D.ddim_step(x, eps, ab_s, ab_t)
    dpm1 = D.dpm_solver_2m_step(x, x0, jnp.zeros(2), ab_s, ab_t, 0.1, False)
    np.testing.assert_allclose(dpm1, ddim, rtol=1e-5)
    # second order: + alpha_t (1 - e^-h) (x0 - x0_prev) / (2 r)
    lam = lambda ab: 0.5 * math.log(ab / (1 - ab))
    h, r = lam(ab_t) - lam(ab_s), (lam(ab_s) - lam(0.1)) / (lam(ab_t) - lam(ab_s))
    prev = jnp.array([0.3, 0.0])
    corr = math.sqrt(ab_t) * (1 - math.exp(-h)) * (x0 - prev) / (2 * r)
    np.testing.assert_allclose(D.dpm_solver_2m_step(x, x0, prev, ab_s, ab_t, 0.1, True), ddim + corr, rtol=1e-5)
    # the clean end (alpha_bar 1) returns the data prediction
    np.testing.assert_allclose(D.dpm_solver_2m_step(x, x0, prev, ab_s, 1.0, 0.1, False), x0, atol=1e-7)


def test_classifier_free_guidance_arithmetic_one_batched_call():
    b = 3
    calls = []

    def denoise(x, t, cond):
        calls.append((x.shape, t.shape))
        return x * cond["w"][:, None, None, None] + t[:, None, None, None]

    x = jnp.arange(1.0, b + 1).reshape(b, 1, 1, 1) * jnp.ones((b, 2, 2, 1))
    t = jnp.array([5, 6, 7])
    cond, null = {"w": jnp.array([2.0, 3.0, 4.0])}, {"w": jnp.array(1.0)}
    out_c, out_u = x * cond["w"][:, None, None, None] + t[:, None, None, None], x + t[:, None, None, None]
    for s, want in ((1.0, out_c), (0.0, out_u), (7.5, out_u + 7.5 * (out_c - out_u))):
        calls.clear()
        got = D.guided_denoiser(denoise, cond, null, s)(x, t)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert calls == [((2 * b, 2, 2, 1), (2 * b,))]
    np.testing.assert_allclose(D.guided_denoiser(denoise, cond, None, None)(x, t), out_c)
    with pytest.raises(ValueError, match="null_cond"):
        D.guided_denoiser(denoise, cond, None, 7.5)


def test_sample_with_traced_guidance_and_stochastic_ddim():
    s = D.make_schedule()
    denoise = lambda x, t, c: 0.1 * x + c[:, :, None, None]
    cond, null = jnp.ones((2, 1)), jnp.zeros((1,))
    xT = jax.random.normal(jax.random.key(0), (2, 2, 2, 1))
    cfg = D.SamplerConfig(num_steps=5)
    run = jax.jit(lambda g: D.sample(denoise, s, xT, cond, null, cfg, guidance_scale=g))
    assert not np.allclose(run(1.0), run(7.5))
    np.testing.assert_allclose(run(7.5), D.sample(denoise, s, xT, cond, null, cfg), rtol=1e-5)
    sto = D.SamplerConfig(num_steps=5, eta=1.0)
    a = D.sample(denoise, s, xT, cond, null, sto, rng=jax.random.key(1))
    b = D.sample(denoise, s, xT, cond, null, sto, rng=jax.random.key(2))
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="rng"):
        D.sample(denoise, s, xT, cond, null, sto)
    with pytest.raises(ValueError, match="eta"):
        D.SamplerConfig(sampler="dpm_solver_2m", eta=0.5)


# ------------------------------------------------------------------------------------------------
# Conformance with diffusers (optional)
# ------------------------------------------------------------------------------------------------


def _fake_model_np(x, t, w):
    """A smooth, timestep-dependent stand-in for a denoiser, written once for numpy and jax."""
    return (np.tanh(0.5 * x + w) * (t / 1000.0) + 0.3 * x).astype(np.float32)


def _fake_model_jnp(x, t, c):
    tt = t.astype(jnp.float32)[:, None, None, None]
    return jnp.tanh(0.5 * x + c[:, None, None, None]) * (tt / 1000.0) + 0.3 * x


def _diffusers_loop(scheduler, xT, cond_w, null_w, scale, noises=None):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(np.asarray(xT, np.float32))
    for i, t in enumerate(scheduler.timesteps):
        xn = x.numpy()
        tt = np.full((xn.shape[0], 1, 1, 1), float(t), np.float32)
        out_u = _fake_model_np(xn, tt, np.asarray(null_w)[None, None, None, None])
        out_c = _fake_model_np(xn, tt, np.asarray(cond_w)[:, None, None, None])
        out = torch.from_numpy((out_u + scale * (out_c - out_u)).astype(np.float32))
        kw = {}
        if noises is not None:
            kw = dict(eta=1.0, variance_noise=torch.from_numpy(noises[i]))
        x = scheduler.step(out, t, x, **kw).prev_sample
    return x.numpy()


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
@pytest.mark.parametrize("spacing,eta", [("leading", 0.0), ("trailing", 0.0), ("leading", 1.0)])
def test_ddim_matches_diffusers(prediction, spacing, eta):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    sched = D.make_schedule()
    ref = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  prediction_type=prediction, timestep_spacing=spacing)
    np.testing.assert_allclose(sched.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-5)
    n = 20
    ref.set_timesteps(n)
    np.testing.assert_array_equal(D.sampling_timesteps(1000, n, spacing), ref.timesteps.numpy())
    xT = np.asarray(jax.random.normal(jax.random.key(0), (2, 4, 4, 1)))
    cond_w, null_w, scale = np.array([0.5, -0.8], np.float32), np.float32(0.1), 7.5
    cfg = D.SamplerConfig(num_steps=n, spacing=spacing, prediction=prediction, eta=eta)
    rng = jax.random.key(5)
    ours = D.sample(_fake_model_jnp, sched, jnp.asarray(xT), jnp.asarray(cond_w), jnp.asarray(null_w), cfg,
                    rng=rng if eta else None)
    noises = None
    if eta:  # the same draws the scan makes
        noises = [np.asarray(jax.random.normal(k, xT.shape)) for k in jax.random.split(rng, n)]
    want = _diffusers_loop(ref, xT, cond_w, null_w, scale, noises)
    assert _rel(ours, want) < 1e-4


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
@pytest.mark.parametrize("spacing,n", [("leading", 20), ("trailing", 8)])
def test_dpm_solver_2m_matches_diffusers(prediction, spacing, n):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    sched = D.make_schedule()
    ref = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
        prediction_type=prediction, steps_offset=1)
    # diffusers' DPM "leading" rule differs from its DDIM one; hand it our (DDIM-rule) timesteps
    ours_ts = D.sampling_timesteps(1000, n, spacing)
    ref.set_timesteps(timesteps=ours_ts.tolist())
    np.testing.assert_array_equal(ours_ts, ref.timesteps.numpy())
    xT = np.asarray(jax.random.normal(jax.random.key(1), (2, 4, 4, 1)))
    cond_w, null_w, scale = np.array([0.5, -0.8], np.float32), np.float32(0.1), 3.0
    cfg = D.SamplerConfig(sampler="dpm_solver_2m", num_steps=n, spacing=spacing, prediction=prediction,
                          guidance_scale=scale)
    ours = D.sample(_fake_model_jnp, sched, jnp.asarray(xT), jnp.asarray(cond_w), jnp.asarray(null_w), cfg)
    want = _diffusers_loop(ref, xT * float(ref.init_noise_sigma), cond_w, null_w, scale)
    assert _rel(ours, want) < 1e-4
