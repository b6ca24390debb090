// qedu: MathJax 3 settings for the static lesson pages (`make html`), then the vendored MathJax.
// nbconvert's page loads this file as its "mathjax_url"; everything stays on disk (no CDN).
(function () {
  // The widget renderer still speaks MathJax 2 (MathJax.Hub.Queue(["Typeset", MathJax.Hub, el])):
  // answer it with MathJax 3's typesetPromise, holding early calls until MathJax is ready.
  var pending = [];
  var hub = {
    Queue: function (job) {
      var el = job && job[2];
      var mj = window.MathJax;
      if (mj && mj.typesetPromise && mj.startup && mj.startup.document) {
        mj.typesetPromise(el ? [el] : undefined).catch(function () {});
      } else {
        pending.push(el);
      }
    },
  };
  window.MathJax = {
    Hub: hub,
    tex: {
      inlineMath: [['$', '$'], ['\\(', '\\)']],
      displayMath: [['$$', '$$'], ['\\[', '\\]']],
      processEscapes: true,
      processEnvironments: true,
      packages: { '[+]': ['textmacros'] },  // \text{zero\_point} as in JupyterLab
    },
    // plain-text outputs (prints, reprs) are not TeX, even when they hold a $
    options: { ignoreHtmlClass: 'tex2jax_ignore|jp-RenderedText' },
    startup: {
      ready: function () {
        MathJax.startup.defaultReady();
        MathJax.Hub = hub;
        MathJax.startup.promise.then(function () {
          var els = pending.filter(Boolean);
          pending = [];
          if (els.length) { MathJax.typesetPromise(els).catch(function () {}); }
        });
      },
    },
  };
  var script = document.createElement('script');
  script.src = new URL('mathjax/tex-chtml-full.js', document.currentScript.src).href;
  script.async = true;
  document.head.appendChild(script);
}());
