"""Vectorisable float32 approximations of exp, tanh and erf, shared by the code generators.

Libraries' transcendentals are out-of-line calls that no vectoriser crosses: LLVM's libm calls
and PoCL's builtins alike (on PoCL, 2 cores: exp 4.9 ns, tanh 6.8 ns, erf 10.1 ns per element,
against 0.4 ns for a multiply-add). These are straight-line arithmetic instead: the LLVM backend
builds them as IR (``backends/llvm/codegen.py``), the OpenCL backend renders them as OpenCL C
helpers for CPU devices (``c_helpers``). Coefficients are highest degree first (Horner).

Sources: exp's and tanh's reductions and coefficients are Cephes' (S. L. Moshier, *Methods and
Programs for Mathematical Functions*, 1989: expf.c, tanhf.c); erf's are a least-squares fit made
with numpy against scipy.special (relative error 3e-9 in exact arithmetic) below 1 and a
Chebyshev interpolant (numpy.polynomial.chebyshev; absolute error 3e-8) above: no exp, no
division. Measured maximum errors (float32): exp 0.95 ulp over [-80, 80], tanh 1.14 ulp, erf
2.4 ulp over [-8, 8] (tests/backends/test_transcendentals.py, on both backends).
"""

from __future__ import annotations

# exp(x) = 2^n exp(r), n = floor(x / ln 2 + 1/2), r = x - n ln 2 with ln 2 split in two parts
EXP_HI, EXP_LO = 88.72283905206835, -87.33654475055310  # float32's overflow and underflow edges
LOG2E = 1.4426950408889634
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4
EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
         5.0000001201e-1)  # exp(r) = 1 + r + r^2 P(r)
# tanh(x) = x + x^3 P(x^2) for |x| < TANH_SMALL, else sign(x) (1 - 2 / (exp(2|x|) + 1))
TANH_SMALL = 0.625
TANH_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
          -3.33332819422e-1)
# erf(x) = x P(x^2) on [0, 1]; on [1, ERF_HI], a polynomial in u = x ERF_SCALE + ERF_SHIFT (x
# mapped onto [-1, 1]): the degree-13 Chebyshev interpolant of erf there (abs error 3e-8 in exact
# arithmetic); from ERF_ONE on, float32's erf is 1 (x between ERF_HI and ERF_ONE evaluates at
# ERF_HI: 1 - 5.6e-8, within an ulp)
ERF_P = (7.843558674660295e-05, -0.0008003823912963709, 0.005187146329854613,
         -0.026852869583195566, 0.11283550948489034, -0.3761262078600941, 1.1283791637708311)
ERF_HI, ERF_ONE = 3.85, 3.919205904006958
ERF_SCALE, ERF_SHIFT = 0.7017543911933899, -1.7017543315887451
ERF_Q = (-1.6119956853799522e-05, -0.0006608093972317874, 0.001482914318330586,
         0.001481272978708148, -0.007745956536382437, 0.008246160112321377,
         0.004062701482325792, -0.025608694180846214, 0.043661098927259445,
         -0.04598125442862511, 0.03271391987800598, -0.015521582216024399,
         0.004491028841584921, 0.9993952512741089)


def _f(v: float) -> str:
    return f"{v!r}f"


def _horner(x: str, coeffs: tuple[float, ...]) -> str:
    acc = _f(coeffs[0])
    for c in coeffs[1:]:
        acc = f"({acc} * {x} + {_f(c)})"
    return acc


def c_helpers() -> str:
    """OpenCL C definitions of ``gn_exp_f32``, ``gn_tanh_f32`` and ``gn_erf_f32`` (float ->
    float): only arithmetic, selects and bit casts, so a CPU device's vectoriser takes them.
    Overflow gives inf, underflow 0, NaN stays NaN; erf(-0) = -0."""
    return f"""
inline float gn_exp_f32(float x) {{
    float xc = x > {_f(EXP_HI)} ? {_f(EXP_HI)} : x;
    xc = xc < {_f(EXP_LO)} ? {_f(EXP_LO)} : xc;
    const float v = xc * {_f(LOG2E)} + 0.5f;
    int n = (int)v;
    n -= (v < (float)n) ? 1 : 0;  /* floor, without the library call */
    const float nf = (float)n;
    const float r = (xc - nf * {_f(LN2_HI)}) - nf * {_f(LN2_LO)};
    const float e = {_horner("r", EXP_P)} * (r * r) + r + 1.0f;
    const int nh = n >> 1;  /* 2^n in two factors, so n = 128 cannot overflow the exponent */
    float out = e * as_float((nh + 127) << 23) * as_float((n - nh + 127) << 23);
    out = x > {_f(EXP_HI)} ? INFINITY : out;
    out = x < {_f(EXP_LO - 16)} ? 0.0f : out;
    return x != x ? x : out;
}}
inline float gn_tanh_f32(float x) {{
    const float ax = as_float(as_int(x) & 0x7fffffff);
    const float z = x * x;
    const float small = {_horner("z", TANH_P)} * z * x + x;
    float big = 1.0f - 2.0f / (gn_exp_f32(ax * 2.0f) + 1.0f);
    big = x < 0.0f ? -big : big;
    return ax < {_f(TANH_SMALL)} ? small : big;
}}
inline float gn_erf_f32(float x) {{
    const float ax = as_float(as_int(x) & 0x7fffffff);
    const float small = ax * {_horner("(ax * ax)", ERF_P)};
    const float u = (ax > {_f(ERF_HI)} ? {_f(ERF_HI)} : ax) * {_f(ERF_SCALE)} + {_f(ERF_SHIFT)};
    const float big = ax >= {_f(ERF_ONE)} ? 1.0f : {_horner("u", ERF_Q)};
    const float mag = ax < 1.0f ? small : big;
    return as_float(as_int(mag) | (as_int(x) & (int)0x80000000));
}}
"""
