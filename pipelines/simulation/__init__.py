"""Mechanistic simulator of the clinical course after CD19 CAR T cells (the embedded cohort and oracle).

Every published effect emerges from the mechanism; no outcome (response, relapse, its phenotype or
site, HSCT) is drawn per risk group. Some latent *rates* do take a hand-set multiplier per
covariate group, each standing for a biological or policy mechanism (``params`` holds them all):

- blinatumomab non-response lowers latent T-cell fitness (``tcell_fitness_blina_nonresponder``),
  which weakens CAR expansion and persistence (hence its lower CR and EFS);
- prior blinatumomab multiplies the seeding of pre-existing CD19-negative subclones and the rate of
  acquired escape (``hidden_seed_factor_blina_*``: selection by CD19-directed therapy);
- >= 2 prior CRs speed CD19-positive regrowth (``regrowth_factor_two_prior_crs``: more aggressive
  relapsed disease; it produces the CAR-MA HR 1.3 of CD19-positive relapse);
- KMT2A makes escape variants myeloid (``p_escape_myeloid_kmt2a``: lineage plasticity);
- active EMD weakens the CAR's extramedullary kill and makes the marrow patchier;
- a prior HSCT raises the later death hazard and lowers the HSCT decision rate; each center's
  policy multiplies the HSCT decision hazard.

Modules, in the order the course unfolds
----------------------------------------
``params``       frozen dataclasses of every parameter; the defaults are the calibrated values.
``covariates``   the patient at infusion: realistic marginals and correlations (age, KMT2A in
                 infants, blast mixture, blinatumomab history, CD19-dim blasts, antigen load,
                 fludarabine exposure, construct, center) plus latent T-cell fitness.
``disease``      latent leukemia: CD19-positive, CD19-negative/dim and myeloid-capable clones in
                 marrow and an extramedullary compartment, each a piecewise-linear log10 burden
                 (lymphodepletion debulks; the CAR kills CD19-positive cells while it persists,
                 less so at high burden; escape variants arise under CAR pressure; regrowth
                 after CAR loss). Relapse = closed-form first passage over 5% marrow blasts or
                 evident EM disease; phenotype = the clone that crossed, site = compartment(s).
``persistence``  CAR persistence T_p (primary failure, Weibull proportional hazards on antigen
                 load, fludarabine exposure, CD28, fitness, burden; long persisters) and its
                 read-outs: normal B cells and CAR transgene copies.
``observation``  visit schedule with jitter, missed visits and assays not done; MRD as sampled
                 burden x log-normal noise against each assay's limit (patchy marrow, PB 1-2 logs
                 below BM plus EM shedding); B-cell counts in each center's unit.
``events``       response at the day-28 assessment, relapse, death in remission, consolidative
                 HSCT decided at visits from observed results and center policy, censoring.
``course``       the glue: latent patients, the course's randomness, and its resolution.
``labtext``      results written as laboratories write them (numbers, "0.06%", "<0.01%", "NEG").
``tables``       the three input tables, observed only up to the first event / last follow-up.
``oracle``       true cumulative incidences by Monte Carlo over each patient's own future,
                 conditioned on the latent state at a landmark (ground truth at infusion, oracle
                 at every landmark).

``pipelines.simulate.simulate_cohort`` runs them; ``run_simulate`` writes the cohort folder.
"""

__all__: list[str] = []
