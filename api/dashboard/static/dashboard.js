// Lethe dashboard: the model page's chart of metrics per version (Chart.js, vendored).
// The data come from the page as JSON (script type="application/json"), so no inline
// script is needed and the Content-Security-Policy can forbid them.
(function () {
  "use strict";
  var COLORS = {
    forget_acc: "#d9480f",
    retain_acc: "#2b8a3e",
    test_acc: "#1c7ed6",
    mia_auc: "#7048e8",
  };

  function drawVersionChart() {
    var canvas = document.getElementById("version-chart");
    var source = document.getElementById("version-chart-data");
    if (!canvas || !source || typeof Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    var datasets = Object.keys(data.series).map(function (name) {
      return {
        label: name,
        data: data.series[name],
        borderColor: COLORS[name] || "#495057",
        backgroundColor: COLORS[name] || "#495057",
        borderDash: name === "mia_auc" ? [6, 4] : [],
        spanGaps: true,
        tension: 0,
        pointRadius: 4,
      };
    });
    new Chart(canvas, {
      type: "line",
      data: { labels: data.labels, datasets: datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: {
          y: { min: 0, max: 1, title: { display: true, text: "fraction (MIA: AUC, 0.5 = indistinguishable)" } },
          x: { title: { display: true, text: "model version" } },
        },
        plugins: { legend: { position: "bottom" } },
      },
    });
    canvas.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", drawVersionChart);
})();
